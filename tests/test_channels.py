"""The web channel's own promises beyond the shared contract (`tests/test_channel_contract.py`):
the contract notification, appended to the live feed once per delivery however often it is
sent."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from channels.base import Outcome
from channels.registry import channel_class
from shared.live_feed import epoch_key, feed_key
from shared.notifications import user_room
from shared.settings import Settings
from tests.channel_harness import channel_settings, context_for, delivery_for
from tests.rigs.web import feed_entries


@pytest.fixture
def settings_for_channels() -> Iterator[Settings]:
    with channel_settings() as settings:
        yield settings


def test_web_needs_a_user(settings_for_channels: Settings) -> None:
    channel = channel_class("web")(context_for(settings_for_channels, "web"))
    result = channel.send(delivery_for("web", user_id=None))
    assert result.outcome is Outcome.PERMANENT and result.detail


def test_web_appends_the_contract_notification_to_the_live_feed_once_per_delivery(
    settings_for_channels: Settings,
) -> None:
    settings = settings_for_channels
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    channel = channel_class("web")(context_for(settings, "web"))
    one = delivery_for("web", user_id=f"user-{uuid.uuid4().hex[:6]}")
    first, again = channel.send(one), channel.send(one)
    channel.send(delivery_for("web"))
    stream: Any = client.xrange(feed_key(settings.queue_prefix))
    positions = [position for position, _fields in stream]
    entries = feed_entries(client, settings)
    epoch = client.get(epoch_key(settings.queue_prefix))
    client.close()

    assert (first.outcome, again.outcome) == (Outcome.SENT, Outcome.SENT)
    assert again.detail == "already emitted"
    assert first.receipt == again.receipt == positions[0], "the receipt is the feed position"
    assert len(entries) == 2, "the delivery was appended twice"
    assert epoch, "the feed has no epoch"
    entry = entries[0]
    assert entry["room"] == user_room(one.app_id, one.user_id or "")
    assert entry["id"] == one.delivery_id
    assert json.loads(entry["data"]) == {
        "id": one.delivery_id,
        "message_id": one.message_id,
        "title": "Hello",
        "body": "World",
        "url": None,
        "data": {"k": 1},
        "category": "notification",
        "created_at": one.created_at.isoformat(),
    }
