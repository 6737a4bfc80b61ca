"""One table-driven test of the `Channel` contract for every channel adapter.

Each row is a channel, a delivery, the world it meets (its provider up or down) and the outcome
the worker must get back. Adding a channel is adding its module and its rows here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import redis

from channels.base import ChannelContext, OutboundDelivery, Outcome
from channels.registry import channel_class, channel_names
from shared.ids import new_id, utcnow
from shared.notifications import socketio_channel, user_room
from shared.settings import Settings
from tests.conftest import REDIS_URL, queue_prefix
from tests.stack import wait_until


def delivery(channel: str, **changes: Any) -> OutboundDelivery:
    base = OutboundDelivery(
        delivery_id=new_id("dlv"),
        message_id=new_id("msg"),
        app_id="app_contract",
        channel=channel,
        user_id="alice",
        address=None,
        category="notification",
        content={"title": "Hello", "body": "World", "url": None, "data": {"k": 1}},
        created_at=utcnow(),
    )
    return replace(base, **changes)


@dataclass(frozen=True)
class Case:
    """One row of the contract table."""

    channel: str
    name: str
    delivery: Callable[[], OutboundDelivery]
    outcome: Outcome
    provider_down: bool = False


CASES = [
    Case("web", "emits to the user's room", lambda: delivery("web"), Outcome.SENT),
    Case("web", "needs a user", lambda: delivery("web", user_id=None), Outcome.PERMANENT),
    Case("web", "Redis down is worth a retry", lambda: delivery("web"), Outcome.TRANSIENT, True),
]


@pytest.fixture
def settings_for_channels() -> Iterator[Settings]:
    with queue_prefix() as prefix:
        yield Settings(redis_url=REDIS_URL, queue_prefix=prefix, secret_key="x")


def test_every_channel_has_contract_rows() -> None:
    assert set(channel_names()) <= {case.channel for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.channel}: {c.name}")
def test_channel_contract(case: Case, settings_for_channels: Settings) -> None:
    settings = settings_for_channels
    if case.provider_down:
        settings = settings.with_overrides(redis_url="redis://127.0.0.1:1/0")
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1)
    channel = channel_class(case.channel)(ChannelContext(settings=settings, redis=client))
    try:
        result = channel.send(case.delivery())
    finally:
        channel.close()
        client.close()
    assert result.outcome is case.outcome
    if case.outcome is not Outcome.SENT:
        assert result.detail


def test_web_emits_the_contract_notification_once_per_delivery(
    settings_for_channels: Settings,
) -> None:
    settings = settings_for_channels
    client = redis.Redis.from_url(settings.redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(socketio_channel(settings.queue_prefix))
    wait_until(lambda: pubsub.get_message(timeout=0.1) is None and pubsub.subscribed, 5, "sub")
    channel = channel_class("web")(ChannelContext(settings=settings, redis=client))
    one = delivery("web", user_id=f"user-{uuid.uuid4().hex[:6]}")
    first, again = channel.send(one), channel.send(one)
    channel.send(delivery("web"))
    received: list[dict[str, Any]] = []

    def collect() -> bool:
        item = pubsub.get_message(timeout=0.1)
        if item is not None:
            received.append(json.loads(item["data"]))
        return len(received) >= 2

    wait_until(collect, 5, "two packets on the Socket.IO channel")
    assert pubsub.get_message(timeout=0.3) is None, "a third packet: the delivery was emitted twice"
    pubsub.close()
    client.close()

    assert (first.outcome, again.outcome) == (Outcome.SENT, Outcome.SENT)
    assert again.detail == "already emitted"
    packet = received[0]
    assert packet["method"] == "emit" and packet["event"] == "notification"
    assert packet["room"] == user_room(one.app_id, one.user_id or "")
    assert packet["data"][0] == {
        "id": one.delivery_id,
        "message_id": one.message_id,
        "title": "Hello",
        "body": "World",
        "url": None,
        "data": {"k": 1},
        "category": "notification",
        "created_at": one.created_at.isoformat(),
    }
    assert [p["data"][0]["id"] for p in received].count(one.delivery_id) == 1
