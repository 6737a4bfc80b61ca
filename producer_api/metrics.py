"""Prometheus metrics of the producer API process (exposed on `GET /metrics`), beside the
request metrics every HTTP service has (`shared.http_metrics`)."""

from __future__ import annotations

from prometheus_client import Counter

ACCEPTED = Counter(
    "omnipush_api_accepted_messages_total",
    "Messages accepted (committed to the store), replayed answers to an Idempotency-Key not "
    "included.",
)
