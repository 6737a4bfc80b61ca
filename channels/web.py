"""The web channel: a notification to the user's browser inbox through the gateway.

It appends the notification to the live feed (`shared.live_feed`), a Redis Stream that every
gateway process reads, so whichever gateway holds one of the user's sockets delivers it, and a
gateway that lost Redis for a moment reads on from where it stopped. Appending and marking the
delivery as emitted happen in one Redis script, so a redelivered message is never shown twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from channels.base import Channel, ChannelContext, OutboundDelivery, Result
from shared.batched_script import BatchedScript, Call
from shared.live_feed import MAX_ENTRIES, emitted_key, epoch_key, feed_key
from shared.notifications import notification_payload, user_room

EMITTED_TTL_SECONDS = 7 * 24 * 3600

# Append only if this delivery has not been emitted before; both steps or neither. The marker
# holds the entry's position, which either way is the answer (with 1 when appended now). A
# stream found without its epoch (a Redis that lost its data) gets a new one.
_EMIT_ONCE = """
local held = redis.call('GET', KEYS[1])
if held then
  return {0, held}
end
redis.call('SET', KEYS[3], ARGV[2], 'NX')
local position = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
                            'room', ARGV[4], 'id', ARGV[5], 'data', ARGV[6])
redis.call('SET', KEYS[1], position, 'EX', ARGV[1])
return {1, position}
"""


class WebChannel(Channel):
    """Appends `notification` for the room of (app, user) to the live feed."""

    name = "web"

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        prefix = context.settings.queue_prefix
        self._feed = feed_key(prefix)
        self._epoch = epoch_key(prefix)
        self._emit_once = BatchedScript(_EMIT_ONCE)
        self._prefix = prefix

    def send(self, delivery: OutboundDelivery) -> Result:
        return self.send_many([delivery])[0]

    def send_many(self, deliveries: Sequence[OutboundDelivery]) -> list[Result]:
        """Emit a whole batch in one Redis round trip; each emit-once script stays atomic."""
        results: list[Result | None] = [None] * len(deliveries)
        calls: list[Call] = []
        queued: list[int] = []
        epoch = uuid.uuid4().hex
        for index, delivery in enumerate(deliveries):
            if not delivery.user_id:
                results[index] = Result.permanent("the web channel needs a user_id")
                continue
            payload = notification_payload(
                delivery.delivery_id,
                delivery.message_id,
                delivery.content,
                delivery.category,
                delivery.created_at,
            )
            keys = [emitted_key(self._prefix, delivery.delivery_id), self._feed, self._epoch]
            args = [
                EMITTED_TTL_SECONDS,
                epoch,
                MAX_ENTRIES,
                user_room(delivery.app_id, delivery.user_id),
                delivery.delivery_id,
                json.dumps(payload, separators=(",", ":")),
            ]
            calls.append((keys, args))
            queued.append(index)
        if queued:
            try:
                replies = self._emit_once.run(self.context.redis, calls, raise_on_error=False)
            except (RedisError, OSError) as error:
                replies = [error] * len(queued)
            for index, reply in zip(queued, replies, strict=True):
                results[index] = _result_of(reply)
        return [result or Result.transient("not attempted") for result in results]


def _result_of(reply: Any) -> Result:
    if isinstance(reply, Exception):
        return Result.transient(f"Redis unavailable: {type(reply).__name__}")
    appended, position = reply
    receipt = position.decode() if isinstance(position, bytes) else str(position)
    return Result.sent(None if appended else "already emitted", receipt=receipt)
