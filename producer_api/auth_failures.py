"""Failed authentications per client address: past a few a minute, the address must wait.

A bad API key costs the store a query the first time a process sees it (the key cache then
remembers it), so someone trying many keys would otherwise reach the store on every request.
Each address may present `limit` bad keys per `window_seconds`; after that, requests from it
whose key the process does not already know to be good are refused with 429 and
`Retry-After` until the window ends, without asking the store. The count is one Redis key per
address, shared by every API process; each process also remembers for itself which addresses
are waiting, so a flood from one of them does not reach Redis either.

Like the rate limiter this is protection, not bookkeeping: when Redis cannot be reached, bad
keys get their 401 as before rather than anyone being refused: its calls go through
`shared.best_effort_redis`, so a hung Redis holds no request up either.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from redis import Redis

from shared.best_effort_redis import BestEffortRedis

#: Bad keys one address may present per window, and the window.
FAILURES_PER_WINDOW = 30
WINDOW_SECONDS = 60.0

# KEYS[1] the address's counter; ARGV[1] the window in ms. Counts one failure and returns
# {failures in this window, ms until the window ends}.
_RECORD = """
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {failures, redis.call('PTTL', KEYS[1])}
"""


class FailedAuthLimiter:
    """Counts bad keys per client address in Redis; see the module docstring."""

    def __init__(
        self,
        redis: BestEffortRedis,
        prefix: str,
        limit: int = FAILURES_PER_WINDOW,
        window_seconds: float = WINDOW_SECONDS,
        max_waiting: int = 10_000,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.limit = limit
        self.window_seconds = window_seconds
        self.max_waiting = max_waiting
        self._record = redis.client.register_script(_RECORD)
        self._waiting: dict[str, float] = {}  # address -> monotonic time its wait ends
        self._lock = threading.Lock()

    def _key(self, address: str) -> str:
        return f"{self.prefix}:authfail:{address}"

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until `address` may try an unknown key again, or None if it may now."""
        waiting = self._remembered(address)
        if waiting is not None:
            return waiting
        counted = self.redis.call(
            "failed authentications",
            lambda client: _count_and_ttl(client, self._key(address)),
            fallback=None,
        )
        if counted is None:
            return None
        failures, ttl_ms = counted
        if failures is None or int(failures) < self.limit:
            return None
        return self._wait(address, int(ttl_ms))

    def record(self, address: str) -> int | None:
        """Count a bad key from `address`: whole seconds it must now wait, or None when it is
        still within its allowance."""
        waiting = self._remembered(address)
        if waiting is not None:
            return waiting
        counted = self.redis.call(
            "failed authentications",
            lambda _client: self._record(
                keys=[self._key(address)], args=[math.ceil(self.window_seconds * 1000)]
            ),
            fallback=None,
        )
        if counted is None:
            return None
        failures, ttl_ms = counted
        if int(failures) <= self.limit:
            return None
        return self._wait(address, int(ttl_ms))

    def _remembered(self, address: str) -> int | None:
        now = time.monotonic()
        with self._lock:
            until = self._waiting.get(address)
            if until is None:
                return None
            if until <= now:
                del self._waiting[address]
                return None
        return max(1, math.ceil(until - now))

    def _wait(self, address: str, ttl_ms: int) -> int:
        # A counter without an expiry (PTTL -1) would block forever: wait one window at most.
        seconds = ttl_ms / 1000 if ttl_ms > 0 else self.window_seconds
        with self._lock:
            if len(self._waiting) >= self.max_waiting:
                self._waiting.clear()
            self._waiting[address] = time.monotonic() + seconds
        return max(1, math.ceil(seconds))


def _count_and_ttl(client: Redis, key: str) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        pipe.get(key)
        pipe.pttl(key)
        return pipe.execute()
