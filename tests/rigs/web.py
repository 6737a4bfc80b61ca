"""The web channel's rig: its "provider" is the live feed in Redis, behind a fault proxy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import redis

from channels.base import OutboundDelivery
from channels.registry import channel_class
from shared.live_feed import feed_key
from shared.notifications import user_room
from shared.settings import Settings
from tests.channel_harness import Answer, Rig, context_for, delivery_for
from tests.fault_proxy import FaultProxy

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


def feed_entries(client: redis.Redis, settings: Settings) -> list[dict[str, str]]:
    """The live feed's entries, oldest first (`client` decodes responses)."""
    entries: Any = client.xrange(feed_key(settings.queue_prefix))
    return [fields for _id, fields in entries]


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    target = urlsplit(settings.redis_url)
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        via = settings.with_overrides(redis_url=f"redis://{proxy.address}/0")
        reader = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        channel = channel_class(CHANNEL)(context_for(via, CHANNEL))

        def check_sent(delivery: OutboundDelivery) -> None:
            entries = feed_entries(reader, settings)
            mine = [fields for fields in entries if fields["id"] == delivery.delivery_id]
            assert len(mine) == 1, "the notification is not in the live feed once"
            assert mine[0]["room"] == user_room(delivery.app_id, delivery.user_id or "")

        try:
            yield Rig(channel, RedisFault(proxy), lambda: delivery_for(CHANNEL), check_sent)
        finally:
            channel.close()
            reader.close()
