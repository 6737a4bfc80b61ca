"""The web channel's rig: its "provider" is Redis pub/sub, reached through a fault proxy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis

from channels.base import OutboundDelivery
from channels.registry import channel_class
from shared.notifications import socketio_channel, user_room
from shared.settings import Settings
from tests.channel_harness import Answer, Rig, context_for, delivery_for
from tests.fault_proxy import FaultProxy
from tests.stack import wait_until

CHANNEL = "web"
SUPPORTS = frozenset({Answer.OK, Answer.TIMEOUT, Answer.DOWN})


class RedisFault:
    """Redis as the web channel meets it: answering, hanging or refusing connections."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def answer(self, mode: Answer) -> None:
        if mode is Answer.TIMEOUT:
            self.proxy.hang()
        elif mode is Answer.DOWN:
            self.proxy.refuse()
        else:
            self.proxy.resume()


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    target = urlsplit(settings.redis_url)
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        via = settings.with_overrides(redis_url=f"redis://{proxy.address}/0")
        listener = redis.Redis.from_url(settings.redis_url)
        pubsub = listener.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(socketio_channel(settings.queue_prefix))
        wait_until(lambda: pubsub.get_message(timeout=0.1) is None and pubsub.subscribed, 5, "sub")
        channel = channel_class(CHANNEL)(context_for(via, CHANNEL))

        def check_sent(delivery: OutboundDelivery) -> None:
            packets: list[dict[str, object]] = []

            def received() -> bool:
                item = pubsub.get_message(timeout=0.1)
                if item is not None:
                    packets.append(json.loads(item["data"]))
                return any(p["data"][0]["id"] == delivery.delivery_id for p in packets)  # type: ignore[index]

            wait_until(received, 5, "the notification on the Socket.IO channel")
            packet = next(p for p in packets if p["data"][0]["id"] == delivery.delivery_id)  # type: ignore[index]
            assert packet["room"] == user_room(delivery.app_id, delivery.user_id or "")

        try:
            yield Rig(channel, RedisFault(proxy), lambda: delivery_for(CHANNEL), check_sent)
        finally:
            channel.close()
            pubsub.close()
            listener.close()
