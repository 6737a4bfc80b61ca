"""Prometheus metrics of the gateway process (exposed on `GET /metrics`), beside the request
metrics every HTTP service has (`shared.http_metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTED_SOCKETS = Gauge(
    "omnipush_gateway_connected_sockets", "Socket.IO clients connected to this process."
)
CONNECTS = Counter(
    "omnipush_gateway_connects_total", "Socket.IO connection attempts by outcome.", ["outcome"]
)
REPLAYED = Counter(
    "omnipush_gateway_replayed_total", "Unacknowledged notifications replayed on connect."
)
REPLAY_WAIT = Histogram(
    "omnipush_gateway_replay_wait_seconds",
    "How long a connect's replay waited for its turn at the store.",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30),
)
ACKNOWLEDGED = Counter(
    "omnipush_gateway_acknowledged_total", "Web deliveries marked delivered by a browser ack."
)
READ = Counter("omnipush_gateway_read_total", "Web deliveries marked read, by route.", ["via"])
REJECTED_EVENTS = Counter(
    "omnipush_gateway_rejected_events_total", "Socket.IO events refused as invalid.", ["event"]
)
REPLAY_FAILURES = Counter(
    "omnipush_gateway_replay_failures_total",
    "Connects whose replay failed (the client got an `error` event).",
)
EXPIRED_SOCKETS = Counter(
    "omnipush_gateway_expired_sockets_total", "Sockets disconnected because their token expired."
)
RENEWALS = Counter(
    "omnipush_gateway_token_renewals_total", "Socket `renew` events by outcome.", ["outcome"]
)
FEED_OUTAGES = Counter(
    "omnipush_gateway_feed_outages_total",
    "Times this process lost the live feed in Redis (refused, dropped or silent).",
)
FEED_CATCH_UPS = Counter(
    "omnipush_gateway_feed_catch_ups_total",
    "Times this process filled a gap in the live feed from the store.",
)
FEED_RECOVERED = Counter(
    "omnipush_gateway_feed_recovered_total",
    "Notifications sent to sockets by catch-ups from the store.",
)
SLOW_CONSUMERS = Counter(
    "omnipush_gateway_slow_consumers_total",
    "Sockets cut off because they stopped reading: too much waiting for them (backlog), or a "
    "frame that waited too long (stalled).",
    ["reason"],
)
