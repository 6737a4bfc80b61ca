"""Redis for what a service can do without: short timeouts, no retries and a circuit breaker.

Rate limits and in-flight locks protect the API; they are not what it is for. Through the usual
client (seconds of timeout, retried), a Redis that accepts connections and never answers held
every request for many seconds. A `BestEffortRedis` call gives up after `timeout` (100 ms) and
its caller goes on with a fallback. After a failure the breaker opens: for `cool_down` seconds
no call is made at all and every caller gets its fallback at once; then a single call probes
Redis, and the breaker closes again when it answers. Each opening and closing is counted as a
Redis outage and reconnect (`shared.pipeline_metrics.ConnectionMetrics`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.pipeline_metrics import ConnectionMetrics

log = structlog.get_logger(__name__)

Result = TypeVar("Result")

#: How long one call may take, connecting included.
TIMEOUT_SECONDS = 0.1
#: How long Redis is left alone after a failure before one call probes it again.
COOL_DOWN_SECONDS = 3.0


class Breaker:
    """Whether calls may be made now: closed, open until a time, or letting one probe through.

    The lock guards the state only; it is never held while a call runs.
    """

    def __init__(self, cool_down: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cool_down = cool_down
        self._clock = clock
        self._open_until: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    def allows(self) -> bool:
        """Whether a call may be made now (when open, only one probe once the cool-down ends)."""
        with self._lock:
            if self._open_until is None:
                return True
            if self._probing or self._clock() < self._open_until:
                return False
            self._probing = True
            return True

    def failed(self) -> bool:
        """A call failed: open (again) for the cool-down. True when this opened the breaker."""
        with self._lock:
            opened = self._open_until is None
            self._open_until = self._clock() + self.cool_down
            self._probing = False
            return opened

    def succeeded(self) -> bool:
        """A call succeeded: close. True when this closed an open breaker."""
        with self._lock:
            closed = self._open_until is not None
            self._open_until = None
            self._probing = False
            return closed


class BestEffortRedis:
    """A Redis client whose calls fail fast and are skipped while Redis is failing."""

    def __init__(
        self,
        url: str,
        timeout: float = TIMEOUT_SECONDS,
        cool_down: float = COOL_DOWN_SECONDS,
        connections: ConnectionMetrics | None = None,
    ) -> None:
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self.breaker = Breaker(cool_down)
        self.connections = connections or ConnectionMetrics("unnamed")

    def call(self, what: str, action: Callable[[redis.Redis], Result], fallback: Result) -> Result:
        """`action(client)`, or `fallback` when Redis fails or is being left alone; `what`
        names the call in the log lines that say Redis went away and came back."""
        if not self.breaker.allows():
            return fallback
        try:
            result = action(self.client)
        except redis.ResponseError as error:
            # Redis answered, with an error: a fault of the call, not of Redis.
            log.warning("redis.call_failed", detail=f"{what}: {error}")
            return fallback
        except (redis.RedisError, OSError) as error:
            if self.breaker.failed():
                self.connections.redis_lost()
                log.warning(
                    "redis.skipped",
                    detail=f"Redis failed during {what} ({type(error).__name__}: {error}); "
                    "what can do without it goes on without it, trying Redis again every "
                    f"{self.breaker.cool_down:g} s",
                )
            return fallback
        if self.breaker.succeeded():
            self.connections.redis_back()
            log.info("redis.back", detail="Redis answers again")
        return result

    def close(self) -> None:
        self.client.close()
