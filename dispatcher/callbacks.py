"""The callbacks service: POSTs each message's final status to its callback URL, signed.

It polls the callback outbox (`shared.outbox`), takes due rows under a lease, and POSTs each
one through the private-address guard (`shared.outbound.outbound_client`, so a URL that now
resolves into our own network is refused at call time too) with the Standard Webhooks headers
`webhook-id` (the row's id, the same on every attempt), `webhook-timestamp` and
`webhook-signature` (HMAC-SHA256 keyed by the app's callback secret). A 2xx answer is sent; any
other answer or a network error is tried again after an exponential back-off with jitter, up to
`max_attempts` attempts in all, then given up on (`callback_failed`); a URL the guard refuses is
given up on at once. Each outcome is traced on the message and counted
(`shared.pipeline_metrics.CallbackMetrics`), once its record is committed.

Delivery is at least once: a sender killed between a POST and its record leaves the row to be
taken again when its lease ends, with the same `webhook-id` for the receiver to deduplicate.
"""

from __future__ import annotations

import json
import random
import threading
from datetime import timedelta

import httpx
import structlog
from sqlalchemy.exc import SQLAlchemyError

from shared.ids import utcnow
from shared.outbound import OutboundPolicy, OutboundRefused, outbound_client
from shared.outbox import (
    DueCallback,
    Outcome,
    callback_secret,
    claim_due,
    record,
)
from shared.pipeline_metrics import CallbackMetrics
from shared.runtime import Runtime
from shared.standard_webhooks import signed_headers
from shared.stop_signals import stop_on_signals

log = structlog.get_logger(__name__)

#: Attempts in all before a callback is given up on.
MAX_ATTEMPTS = 8
#: The back-off before the second attempt, doubling after each failure up to `MAX_DELAY`.
BASE_DELAY = timedelta(seconds=5)
MAX_DELAY = timedelta(hours=1)
#: How long a taken callback is held before another sender may assume this one died.
LEASE = timedelta(seconds=60)
REQUEST_TIMEOUT_SECONDS = 10.0


def backoff(attempt: int, base: timedelta, cap: timedelta, chooser: random.Random) -> timedelta:
    """The wait after failed attempt number `attempt`: `base` doubled per attempt, capped, then
    jittered down by up to a half so that callbacks that failed together do not return together."""
    ceiling = min(cap.total_seconds(), base.total_seconds() * 2 ** (attempt - 1))
    return timedelta(seconds=ceiling * chooser.uniform(0.5, 1.0))


class CallbackSender:
    """Sends due callbacks until stopped; see the module docstring."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        policy: OutboundPolicy | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        base_delay: timedelta = BASE_DELAY,
        max_delay: timedelta = MAX_DELAY,
        lease: timedelta = LEASE,
        batch_size: int = 50,
        poll_seconds: float = 0.5,
        metrics: CallbackMetrics | None = None,
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics or CallbackMetrics()
        self.policy = policy or OutboundPolicy(allow=runtime.settings.outbound_allow)
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.lease = lease
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self._chooser = random.Random()
        self._stopping = threading.Event()

    def install_signal_handlers(self) -> None:
        stop_on_signals(self.stop, "callbacks.stopping")

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        with outbound_client(self.policy, timeout=REQUEST_TIMEOUT_SECONDS) as client:
            while not self._stopping.is_set():
                try:
                    handled = self.send_once(client)
                except SQLAlchemyError as error:
                    log.warning("callbacks.store_unavailable", detail=str(error))
                    self._stopping.wait(1.0)
                    continue
                if handled < self.batch_size:
                    self._stopping.wait(self.poll_seconds)
        log.info("callbacks.stopped")

    def send_once(self, client: httpx.Client) -> int:
        """Attempt one batch of due callbacks; how many were attempted."""
        with self.runtime.engine.begin() as connection:
            due = claim_due(connection, utcnow(), self.batch_size, self.lease)
        if not due:
            return 0
        outcomes = [self._attempt(client, callback) for callback in due]
        with self.runtime.engine.begin() as connection:
            ended = record(connection, outcomes, utcnow())
        self.metrics.observe_batch(ended)
        log.info("callbacks.batch", size=len(due), **ended)
        return len(due)

    def _attempt(self, client: httpx.Client, callback: DueCallback) -> Outcome:
        body = json.dumps(callback.payload, separators=(",", ":")).encode()
        secret = callback_secret(self.runtime.settings.secret_key, callback.app_id)
        headers = {"content-type": "application/json", **signed_headers(secret, callback.id, body)}
        try:
            response = client.post(callback.url, content=body, headers=headers)
        except OutboundRefused as refused:
            return Outcome(callback, "failed", f"refused: {refused}")
        except httpx.HTTPError as error:
            return self._failed(callback, f"{type(error).__name__}: {error}")
        if response.is_success:
            return Outcome(callback, "sent")
        return self._failed(callback, f"HTTP {response.status_code}")

    def _failed(self, callback: DueCallback, error: str) -> Outcome:
        if callback.attempt >= self.max_attempts:
            return Outcome(callback, "failed", error)
        wait = backoff(callback.attempt, self.base_delay, self.max_delay, self._chooser)
        return Outcome(callback, "retrying", error, retry_at=utcnow() + wait)
