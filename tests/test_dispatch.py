"""The dispatcher against the real store and broker: expansion, and redelivered messages."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import func, insert, select, update

from dispatcher.dispatch import DispatchConsumer
from shared.amqp.link import AmqpLink
from shared.amqp.topology import DISPATCH_KEY
from shared.ids import new_id, utcnow
from shared.models import Delivery, Event, Message
from shared.payloads import DispatchPayload, encode
from shared.runtime import Runtime
from tests.conftest import AMQP_URL, new_tenant, publish, queue_depth
from tests.stack import wait_until


@contextmanager
def running_dispatcher(runtime: Runtime) -> Iterator[None]:
    """A dispatcher for the duration; leaving waits until it has finished what it took."""
    link = AmqpLink(AMQP_URL, runtime.topology, consume_queues=runtime.topology.dispatch_queues())
    consumer = DispatchConsumer(runtime, link)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    assert link.wait_ready(10)
    try:
        yield
    finally:
        consumer.stop()
        thread.join(20)


def accepted_message(runtime: Runtime, users: list[str]) -> tuple[str, str]:
    tenant = new_tenant(runtime)
    now = utcnow()
    message_id = new_id("msg")
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(Message),
            {
                "id": message_id,
                "app_id": tenant.app_id,
                "status": "queued",
                # The same user twice is one recipient.
                "recipients": [{"user_id": u} for u in [*users, users[0]]],
                "channels": ["web"],
                "content": {"title": "t"},
                "category": "notification",
                "priority": "normal",
                "created_at": now,
                "updated_at": now,
            },
        )
    return message_id, tenant.app_id


def dispatch(runtime: Runtime, message_id: str, app_id: str) -> None:
    body = encode(DispatchPayload(), {"message_id": message_id, "app_id": app_id})
    publish(runtime, DISPATCH_KEY, body)


def deliveries(runtime: Runtime, message_id: str) -> list[tuple[str | None, str]]:
    with runtime.engine.connect() as connection:
        rows = connection.execute(
            select(Delivery.user_id, Delivery.status)
            .where(Delivery.message_id == message_id)
            .order_by(Delivery.user_id)
        ).all()
    return [(user, status) for user, status in rows]


def dispatched_events(runtime: Runtime, message_id: str) -> int:
    with runtime.engine.connect() as connection:
        count = connection.scalar(
            select(func.count()).where(Event.message_id == message_id, Event.stage == "dispatched")
        )
    return int(count or 0)


def test_a_message_becomes_one_delivery_per_recipient_and_channel(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    web_queue = runtime.topology.channel_queue("web")
    message_id, app_id = accepted_message(runtime, ["ann", "ben"])
    with running_dispatcher(runtime):
        dispatch(runtime, message_id, app_id)
        wait_until(lambda: queue_depth(web_queue) == 2, 10, "two deliveries published")
    assert deliveries(runtime, message_id) == [("ann", "queued"), ("ben", "queued")]
    assert dispatched_events(runtime, message_id) == 1


def test_a_redelivered_message_adds_no_rows_and_republishes_only_what_is_unsent(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    web_queue = runtime.topology.channel_queue("web")
    message_id, app_id = accepted_message(runtime, ["cat", "dan"])
    with running_dispatcher(runtime):
        dispatch(runtime, message_id, app_id)
        wait_until(lambda: queue_depth(web_queue) == 2, 10, "two deliveries published")
    with runtime.engine.begin() as connection:
        connection.execute(
            update(Delivery)
            .where(Delivery.message_id == message_id, Delivery.user_id == "cat")
            .values(status="sent")
        )

    dispatch(runtime, message_id, app_id)  # as a broker redelivery would bring it again
    with running_dispatcher(runtime):
        wait_until(lambda: queue_depth(web_queue) >= 3, 10, "dan's delivery published again")
    assert queue_depth(web_queue) == 3, "a delivery already sent was published again"
    assert deliveries(runtime, message_id) == [("cat", "sent"), ("dan", "queued")]
    assert dispatched_events(runtime, message_id) == 1
    assert queue_depth(runtime.topology.dispatch_queue) == 0


def test_a_canceled_message_is_not_dispatched(isolated_runtime: Runtime) -> None:
    runtime = isolated_runtime
    message_id, app_id = accepted_message(runtime, ["eve"])
    with runtime.engine.begin() as connection:
        connection.execute(
            update(Message).where(Message.id == message_id).values(status="canceled")
        )
    with running_dispatcher(runtime):
        dispatch(runtime, message_id, app_id)
        wait_until(
            lambda: queue_depth(runtime.topology.dispatch_queue) == 0, 10, "the message consumed"
        )
    assert deliveries(runtime, message_id) == []
    assert dispatched_events(runtime, message_id) == 0


def test_a_message_past_its_expiry_is_expired_not_sent(isolated_runtime: Runtime) -> None:
    runtime = isolated_runtime
    message_id, app_id = accepted_message(runtime, ["fay"])
    with runtime.engine.begin() as connection:
        connection.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    with running_dispatcher(runtime):
        dispatch(runtime, message_id, app_id)
        wait_until(
            lambda: queue_depth(runtime.topology.dispatch_queue) == 0, 10, "the message consumed"
        )
    assert deliveries(runtime, message_id) == []
    with runtime.sessions() as session:
        assert session.get(Message, message_id).status == "expired"  # type: ignore[union-attr]
        stages = session.scalars(select(Event.stage).where(Event.message_id == message_id)).all()
    assert list(stages) == ["expired"]
