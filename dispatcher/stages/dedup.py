"""Stage 7: the same content to the same recipient on the same channel, within a window, once.

The identity of what is sent is the message's `dedup_key` when it has one, else a digest of the
channel's rendered part. The first delivery of it takes a Redis key for the app's window of the
message's category, holding its message id; a delivery of another message that finds the key
is `deduplicated`. The same message finding its own key (a redelivery) goes on.
"""

from __future__ import annotations

from typing import Any

from dispatcher.stages.base import Candidate, Verdict
from dispatcher.stages.redis_stage import RedisStage, digest


class ContentDedup(RedisStage):
    """See the module docstring."""

    name = "dedup"
    SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 0
end
if holder == ARGV[1] then
  return 0
end
return 1
"""

    def call_of(self, candidate: Candidate) -> tuple[list[str], list[Any]] | None:
        message = candidate.message
        window = candidate.policy.dedup_window.get(message.category, 0.0)
        if window <= 0:
            return None
        identity = (
            f"key:{message.dedup_key}"
            if message.dedup_key is not None
            else f"content:{candidate.content_digest()}"
        )
        key = f"{self.prefix}:dedup:{message.app_id}:" + digest(
            candidate.target.recipient, candidate.channel, identity
        )
        return [key], [message.id, max(1, round(window * 1000))]

    def verdict(self, candidate: Candidate) -> Verdict:
        what = "dedup_key" if candidate.message.dedup_key is not None else "content"
        window = candidate.policy.dedup_window.get(candidate.message.category, 0.0)
        return Verdict(
            "deduplicated",
            f"the same {what} reached this recipient on {candidate.channel} within {window:g}s",
        )
