"""Stage 8: at most N deliveries per recipient, channel and category in any window.

A Redis sorted set per (app, category, channel, recipient) holds the message ids counted in the
window, scored by Redis's own clock so that every dispatcher counts on the same time line. A
delivery that would go over the app's cap for its category is `throttled`; one whose message is
already counted (a redelivery) goes on.
"""

from __future__ import annotations

from typing import Any

from dispatcher.stages.base import Candidate, Verdict
from dispatcher.stages.redis_stage import RedisStage, digest


class FrequencyCap(RedisStage):
    """See the module docstring."""

    name = "frequency_cap"
    SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 1
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""

    def call_of(self, candidate: Candidate) -> tuple[list[str], list[Any]] | None:
        message = candidate.message
        cap = candidate.policy.frequency_cap.get(message.category)
        if cap is None:
            return None
        key = (
            f"{self.prefix}:cap:{message.app_id}:{message.category}:{candidate.channel}:"
            + digest(candidate.target.recipient)
        )
        return [key], [message.id, max(1, round(cap.window * 1000)), cap.limit]

    def verdict(self, candidate: Candidate) -> Verdict:
        cap = candidate.policy.frequency_cap[candidate.message.category]
        assert cap is not None  # only capped categories are checked
        return Verdict(
            "throttled",
            f"over {cap.limit} {candidate.message.category} per {cap.window:g}s "
            f"on {candidate.channel}",
        )
