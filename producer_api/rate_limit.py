"""Per-API-key rate limiting: a token bucket in Redis, shared by every API process.

Each app's bucket holds up to `burst` tokens and refills at `rate` per second; a request takes
one token or is refused with 429 and `Retry-After`. The bucket is one Redis hash updated by one
script that reads Redis's own clock, so API processes on several hosts agree.

A Redis round trip per request would cost more than the rest of accepting a message, so each
process leases a few tokens at a time (at most `LEASE_MAX`, a twentieth of the burst, and a
second's worth of the rate) and spends them locally for up to `LEASE_SECONDS`. Leased tokens
were taken from the bucket, so the limit is never exceeded; a lease that runs out of time
unspent makes the limit slightly stricter, never looser.

The limiter is protection, not bookkeeping: its Redis calls are best effort (a short timeout,
then a breaker that leaves Redis alone for a while, `shared.best_effort_redis`), and when Redis
cannot answer, requests pass rather than every business system being refused or held up. No
lock is held across a Redis call, so one slow call holds up no other request.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from shared.best_effort_redis import BestEffortRedis

# KEYS[1] bucket; ARGV rate (tokens/s), burst, wanted. Takes up to `wanted` whole tokens and
# returns {taken, seconds until one token is there}.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local taken = math.min(wanted, math.floor(tokens))
local wait = 0
if taken >= 1 then
  tokens = tokens - taken
else
  taken = 0
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {taken, tostring(wait)}
"""

#: The most tokens one process takes from a bucket at once, and how long it may keep them.
LEASE_MAX = 20
LEASE_SECONDS = 1.0


@dataclass(frozen=True)
class Limit:
    """A token bucket's refill rate (requests per second) and size."""

    rate: float
    burst: int

    @property
    def lease(self) -> int:
        """How many tokens a process takes at once from this bucket."""
        return max(1, min(LEASE_MAX, self.burst // 20, int(self.rate * LEASE_SECONDS)))


@dataclass
class _Lease:
    tokens: int
    until: float


class RateLimiter:
    """Takes tokens from per-app buckets; see the module docstring."""

    def __init__(self, redis: BestEffortRedis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._script = redis.client.register_script(_TOKEN_BUCKET)
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()  # guards `_leases`, never held across a Redis call

    def retry_after(self, app_id: str, limit: Limit) -> int | None:
        """None when the request may go ahead, else whole seconds until it may."""
        if self._spend_leased(app_id):
            return None
        taken_and_wait = self.redis.call(
            "rate limits",
            lambda _client: self._script(
                keys=[f"{self.prefix}:ratelimit:{app_id}"],
                args=[limit.rate, limit.burst, limit.lease],
            ),
            fallback=None,
        )
        if taken_and_wait is None:
            return None
        taken, wait = int(taken_and_wait[0]), float(taken_and_wait[1])
        if taken >= 1:
            self._lease(app_id, taken - 1)
            return None
        return max(1, math.ceil(wait))

    def _spend_leased(self, app_id: str) -> bool:
        with self._lock:
            lease = self._leases.get(app_id)
            if lease is not None and lease.tokens > 0 and lease.until > time.monotonic():
                lease.tokens -= 1
                return True
            return False

    def _lease(self, app_id: str, tokens: int) -> None:
        """Keep `tokens` taken from the bucket; concurrent requests may each have taken some."""
        with self._lock:
            now = time.monotonic()
            lease = self._leases.get(app_id)
            if lease is not None and lease.until > now:
                tokens += lease.tokens
            self._leases[app_id] = _Lease(tokens, now + LEASE_SECONDS)
