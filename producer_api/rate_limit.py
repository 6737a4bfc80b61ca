"""Per-API-key rate limiting: a token bucket in Redis, shared by every API process.

Each app's bucket holds up to `burst` tokens and refills at `rate` per second; a request takes
one token or is refused with 429 and `Retry-After`. The bucket is one Redis hash updated by one
script that reads Redis's own clock, so API processes on several hosts agree. The limiter is
protection, not bookkeeping: when Redis cannot be reached, requests pass (and the outage is
logged) rather than every business system being refused.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis
import structlog

log = structlog.get_logger(__name__)

# KEYS[1] bucket; ARGV rate (tokens/s), burst, cost. Returns {allowed, seconds to wait}.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""

#: How often a Redis outage is logged while it lasts.
_OUTAGE_LOG_SECONDS = 10.0


@dataclass(frozen=True)
class Limit:
    """A token bucket's refill rate (requests per second) and size."""

    rate: float
    burst: int


class RateLimiter:
    """Takes tokens from per-app buckets; see the module docstring."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(_TOKEN_BUCKET)
        self._last_outage_log = 0.0

    def retry_after(self, app_id: str, limit: Limit, cost: int = 1) -> int | None:
        """None when the request may go ahead, else whole seconds until it may."""
        try:
            allowed, wait = self._script(
                keys=[f"{self.prefix}:ratelimit:{app_id}"],
                args=[limit.rate, limit.burst, cost],
            )
        except redis.RedisError as error:
            now = time.monotonic()
            if now - self._last_outage_log > _OUTAGE_LOG_SECONDS:
                self._last_outage_log = now
                log.warning("rate_limit.unavailable", detail=str(error))
            return None
        if int(allowed):
            return None
        return max(1, math.ceil(float(wait)))
