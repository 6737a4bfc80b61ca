"""The web channel: a notification to the user's browser inbox through the gateway.

It publishes on the Socket.IO Redis message queue as a write-only emitter, so any gateway
process holding one of the user's sockets delivers it. Publishing and marking the delivery as
emitted happen in one Redis script, so a redelivered message is never shown twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import socketio
from redis.exceptions import RedisError

from channels.base import Channel, ChannelContext, OutboundDelivery, Result
from shared.notifications import notification_payload, socketio_channel, user_room

EMITTED_TTL_SECONDS = 7 * 24 * 3600

# Publish only if this delivery has not been emitted before; both steps or neither.
_EMIT_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
  return 1
end
return 0
"""


class _CapturingEmitter(socketio.RedisManager):  # type: ignore[misc]
    """python-socketio's write-only Redis manager, made to hand back the packet it would send."""

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(url=url, channel=channel, write_only=True)
        self.captured: dict[str, Any] | None = None

    def _publish(self, data: dict[str, Any]) -> None:
        self.captured = data

    def packet(self, event: str, data: dict[str, Any], room: str) -> str:
        self.captured = None
        self.emit(event, data, room=room, namespace="/")
        assert self.captured is not None
        encoded: str = self.json.dumps(self.captured)
        return encoded


class WebChannel(Channel):
    """Emits `notification` to the room of (app, user)."""

    name = "web"

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        self._pubsub_channel = socketio_channel(context.settings.queue_prefix)
        self._emitter = _CapturingEmitter(context.settings.redis_url, self._pubsub_channel)
        self._emit_once = context.redis.register_script(_EMIT_ONCE)
        self._marker_prefix = f"{context.settings.queue_prefix}:web:emitted:"

    def send(self, delivery: OutboundDelivery) -> Result:
        return self.send_many([delivery])[0]

    def send_many(self, deliveries: Sequence[OutboundDelivery]) -> list[Result]:
        """Emit a whole batch in one Redis round trip; each emit-once script stays atomic."""
        results: list[Result | None] = [None] * len(deliveries)
        pipe = self.context.redis.pipeline(transaction=False)
        queued: list[int] = []
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
            packet = self._emitter.packet(
                "notification", payload, user_room(delivery.app_id, delivery.user_id)
            )
            self._emit_once(
                keys=[self._marker_prefix + delivery.delivery_id],
                args=[self._pubsub_channel, packet, EMITTED_TTL_SECONDS],
                client=pipe,
            )
            queued.append(index)
        if queued:
            try:
                replies = pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as error:
                replies = [error] * len(queued)
            for index, reply in zip(queued, replies, strict=True):
                results[index] = _result_of(reply)
        return [result or Result.transient("not attempted") for result in results]


def _result_of(reply: object) -> Result:
    if isinstance(reply, Exception):
        return Result.transient(f"Redis unavailable: {type(reply).__name__}")
    return Result.sent(None if reply else "already emitted")
