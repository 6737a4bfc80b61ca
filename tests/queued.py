"""Where the worker runtime tests of every channel start: a delivery as the dispatcher leaves it
(its message dispatched, the delivery queued, its AMQP message published to the lane of the
channel's queue of the message's priority), and a channel worker and an outbox relay, each
running in a thread of the test."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import insert

from channels.base import Channel
from channels.worker import CLAIM_SECONDS, ChannelWorker
from dispatcher.relay import OutboxRelay
from shared.amqp.link import AmqpLink, Outgoing
from shared.amqp.topology import channel_key
from shared.ids import new_id, utcnow
from shared.models import Delivery, Message
from shared.payloads import DeliveryPayload, encode
from shared.runtime import Runtime
from tests.conftest import AMQP_URL, new_tenant, publish


def queued_delivery(
    runtime: Runtime,
    channel: str = "web",
    *,
    app_id: str | None = None,
    user_id: str = "gina",
    content: Mapping[str, Any] | None = None,
    fallback: list[str] | None = None,
    category: str = "notification",
    priority: str = "normal",
    expires_at: datetime | None = None,
    claimed_at: datetime | None = None,
    callback_url: str | None = None,
) -> tuple[str, str]:
    """A dispatched message's one delivery to user `user_id` on `channel`, and its AMQP message:
    (message id, delivery id). Without `app_id` it belongs to a new app. `claimed_at` makes it
    one a worker claimed then (its first attempt) and never recorded the outcome of."""
    app = app_id or new_tenant(runtime).app_id
    now = utcnow()
    message_id, delivery_id = new_id("msg"), new_id("dlv")
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(Message),
            {
                "id": message_id,
                "app_id": app,
                "status": "dispatched",
                "recipients": [{"user_id": user_id}],
                "channels": [channel],
                "fallback": fallback,
                "content": dict(content or {"title": "t"}),
                "category": category,
                "priority": priority,
                "expires_at": expires_at,
                "callback_url": callback_url,
                "created_at": now,
                "updated_at": now,
            },
        )
        connection.execute(
            insert(Delivery),
            {
                "id": delivery_id,
                "message_id": message_id,
                "app_id": app,
                "recipient": f"user:{user_id}",
                "user_id": user_id,
                "channel": channel,
                "status": "queued" if claimed_at is None else "sending",
                "attempts": 0 if claimed_at is None else 1,
                "created_at": now,
                "updated_at": claimed_at or now,
            },
        )
    payload = {
        "delivery_id": delivery_id,
        "message_id": message_id,
        "app_id": app,
        "channel": channel,
        "priority": priority,
    }
    publish(runtime, channel_key(channel, priority), encode(DeliveryPayload(), payload))
    return message_id, delivery_id


def queued_deliveries(
    runtime: Runtime, count: int, channel: str = "web", *, priority: str = "normal"
) -> tuple[str, list[str]]:
    """One dispatched message of a new app to `count` users on `channel`, its deliveries queued
    and published to its lane in one batch: (message id, delivery ids)."""
    app = new_tenant(runtime).app_id
    now = utcnow()
    message_id = new_id("msg")
    users = [f"user-{index:06d}" for index in range(count)]
    deliveries: list[dict[str, Any]] = [
        {
            "id": new_id("dlv"),
            "message_id": message_id,
            "app_id": app,
            "recipient": f"user:{user}",
            "user_id": user,
            "channel": channel,
            "status": "queued",
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for user in users
    ]
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(Message),
            {
                "id": message_id,
                "app_id": app,
                "status": "dispatched",
                "recipients": [{"user_id": user} for user in users],
                "channels": [channel],
                "content": {"title": "t"},
                "category": "marketing" if priority == "low" else "notification",
                "priority": priority,
                "created_at": now,
                "updated_at": now,
            },
        )
        connection.execute(insert(Delivery), deliveries)
    schema = DeliveryPayload()
    outgoing = [
        Outgoing(
            channel_key(channel, priority),
            encode(
                schema,
                {
                    "delivery_id": row["id"],
                    "message_id": message_id,
                    "app_id": app,
                    "channel": channel,
                    "priority": priority,
                },
            ),
        )
        for row in deliveries
    ]
    link = AmqpLink(AMQP_URL, runtime.topology)
    link.start()
    try:
        assert link.wait_ready(10), "RabbitMQ did not answer"
        for future in link.publish_batch(outgoing):
            future.result(30)
    finally:
        link.close()
    return message_id, [row["id"] for row in deliveries]


@contextmanager
def running_worker(
    runtime: Runtime,
    channel: Channel,
    claim_seconds: float = CLAIM_SECONDS,
    reaches: Mapping[str, frozenset[str]] | None = None,
) -> Iterator[ChannelWorker]:
    """A worker of `channel` consuming its queue's lanes until the block ends."""
    queues = runtime.topology.channel_queues(channel.name)
    link = AmqpLink(AMQP_URL, runtime.topology, consume_queues=queues)
    worker = ChannelWorker(runtime, link, channel, claim_seconds=claim_seconds, reaches=reaches)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(20)


@contextmanager
def running_relay(runtime: Runtime) -> Iterator[None]:
    """An outbox relay publishing the store's due rows until the block ends."""
    relay = OutboxRelay(runtime, AmqpLink(AMQP_URL, runtime.topology))
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        relay.stop()
        thread.join(20)
