"""The web channel's own promises beyond the shared contract (`tests/test_channel_contract.py`):
the contract notification, emitted once per delivery however often it is sent."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from channels.base import Outcome
from channels.registry import channel_class
from shared.notifications import socketio_channel, user_room
from shared.settings import Settings
from tests.channel_harness import channel_settings, context_for, delivery_for
from tests.stack import wait_until


@pytest.fixture
def settings_for_channels() -> Iterator[Settings]:
    with channel_settings() as settings:
        yield settings


def test_web_needs_a_user(settings_for_channels: Settings) -> None:
    channel = channel_class("web")(context_for(settings_for_channels, "web"))
    result = channel.send(delivery_for("web", user_id=None))
    assert result.outcome is Outcome.PERMANENT and result.detail


def test_web_emits_the_contract_notification_once_per_delivery(
    settings_for_channels: Settings,
) -> None:
    settings = settings_for_channels
    client = redis.Redis.from_url(settings.redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(socketio_channel(settings.queue_prefix))
    wait_until(lambda: pubsub.get_message(timeout=0.1) is None and pubsub.subscribed, 5, "sub")
    channel = channel_class("web")(context_for(settings, "web"))
    one = delivery_for("web", user_id=f"user-{uuid.uuid4().hex[:6]}")
    first, again = channel.send(one), channel.send(one)
    channel.send(delivery_for("web"))
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
