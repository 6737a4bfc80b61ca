"""The dispatcher sends the web deliveries it writes itself, as the web worker would: no queue hop
on the way to the browser, the same records, and whatever it could not finish is the web
worker's, once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from channels.web import WebChannel
from channels.worker import ChannelWorker, channel_context
from dispatcher.dispatch import WEB, DispatchConsumer, sends_page_now
from shared.amqp.link import AmqpLink
from shared.live_feed import feed_key
from shared.models import Delivery, Event, Message
from shared.runtime import Runtime
from tests.conftest import AMQP_URL, SMALL_PAGE, queue_depth
from tests.queued import running_worker
from tests.stack import wait_until
from tests.test_dispatch import accepted_message, dispatch
from tests.test_paged_dispatch import topic_message


class FailingOnceRecord(ChannelWorker):
    """Sends, then finds the store gone when it comes to record the first batch: as if the
    dispatcher had stopped between the send and its record."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed = threading.Event()

    def _record(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed.is_set():
            self.failed.set()
            raise OperationalError("UPDATE deliveries", {}, Exception("the store went away"))
        return super()._record(*args, **kwargs)


Sender = TypeVar("Sender", bound=ChannelWorker)


@contextmanager
def dispatcher_sending_web(runtime: Runtime, sender: type[Sender]) -> Iterator[Sender]:
    """A dispatcher that sends its web deliveries itself, running until the block ends."""
    link = AmqpLink(AMQP_URL, runtime.topology, consume_queues=runtime.topology.dispatch_queues())
    web = sender(runtime, link, WebChannel(channel_context(runtime, WEB)))
    consumer = DispatchConsumer(runtime, link, web=web)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    assert link.wait_ready(10)
    try:
        yield web
    finally:
        consumer.stop()
        thread.join(20)
        web.channel.close()


def feed_entries(runtime: Runtime) -> list[dict[bytes, bytes]]:
    entries: Any = runtime.redis.xrange(feed_key(runtime.settings.queue_prefix))
    return [fields for _position, fields in entries]


def delivery_rows(runtime: Runtime, message_id: str) -> list[Any]:
    with runtime.engine.connect() as connection:
        return list(
            connection.execute(
                select(Delivery.id, Delivery.status, Delivery.attempts, Delivery.receipt)
                .where(Delivery.message_id == message_id)
                .order_by(Delivery.user_id)
            )
        )


def stages(runtime: Runtime, message_id: str) -> list[str]:
    with runtime.engine.connect() as connection:
        return list(
            connection.scalars(
                select(Event.stage).where(Event.message_id == message_id).order_by(Event.id)
            )
        )


def message_status(runtime: Runtime, message_id: str) -> str | None:
    with runtime.engine.connect() as connection:
        status: str | None = connection.scalar(
            select(Message.status).where(Message.id == message_id)
        )
        return status


def test_the_dispatcher_sends_web_deliveries_itself_with_no_web_worker_running(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    message_id, app_id = accepted_message(runtime, ["ann", "ben"])
    with dispatcher_sending_web(runtime, ChannelWorker):
        dispatch(runtime, message_id, app_id)
        wait_until(lambda: message_status(runtime, message_id) == "completed", 10, "completed")
    rows = delivery_rows(runtime, message_id)
    assert [(row.status, row.attempts) for row in rows] == [("sent", 1), ("sent", 1)]
    entries = feed_entries(runtime)
    assert sorted(e[b"id"].decode() for e in entries) == sorted(row.id for row in rows)
    assert all(row.receipt for row in rows), "each delivery keeps its feed position"
    # The trace reads as it does when the web worker sends.
    assert stages(runtime, message_id) == ["dispatched", "sent", "sent", "completed"]
    assert queue_depth(runtime.topology.channel_queue(WEB)) == 0, (
        "a delivery went through the queue"
    )
    assert queue_depth(runtime.topology.dispatch_queue) == 0


def test_a_send_the_dispatcher_could_not_record_is_the_web_workers_and_shown_once(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    message_id, app_id = accepted_message(runtime, ["cid"])
    with dispatcher_sending_web(runtime, FailingOnceRecord) as web:
        dispatch(runtime, message_id, app_id)
        wait_until(web.failed.is_set, 10, "the dispatcher to send")
        # Sent to the feed, never recorded: the batch is handled again, and the delivery,
        # still claimed, goes to the web worker's queue.
        wait_until(lambda: queue_depth(runtime.topology.channel_queue(WEB)) == 1, 10, "handed over")
    ((delivery_id, status, attempts, _receipt),) = delivery_rows(runtime, message_id)
    assert (status, attempts) == ("sending", 1)
    with running_worker(runtime, WebChannel(channel_context(runtime, WEB)), claim_seconds=1):
        wait_until(lambda: message_status(runtime, message_id) == "completed", 30, "completed")
    ((_id, status, attempts, receipt),) = delivery_rows(runtime, message_id)
    assert (status, attempts) == ("sent", 2)
    entries = [e for e in feed_entries(runtime) if e[b"id"].decode() == delivery_id]
    assert len(entries) == 1, "the delivery reached the feed twice"
    assert receipt is not None


def test_the_dispatcher_sends_a_large_messages_pages_itself_as_each_commits(
    paged_runtime: Runtime,
) -> None:
    runtime = paged_runtime
    users = [f"sub-{n}" for n in range(2 * SMALL_PAGE + 1)]
    message_id, app_id = topic_message(runtime, users, [])
    with dispatcher_sending_web(runtime, ChannelWorker):
        dispatch(runtime, message_id, app_id)
        wait_until(lambda: message_status(runtime, message_id) == "completed", 20, "completed")
    rows = delivery_rows(runtime, message_id)
    assert [(row.status, row.attempts) for row in rows] == [("sent", 1)] * len(users)
    assert queue_depth(runtime.topology.channel_queue(WEB)) == 0, "a page went through the queue"


@pytest.mark.parametrize(
    ("priority", "waiting", "sends_now"),
    [
        ("normal", None, True),
        ("normal", 2, True),
        ("normal", 1, True),
        ("normal", 0, False),
        ("low", 1, False),
        ("low", 2, True),
        ("high", 0, True),
    ],
    ids=[
        "nothing waits",
        "a low message waits",
        "another normal one waits",
        "a high message waits",
        "a low blast, a normal message waits",
        "a low blast, a low message waits",
        "a high message, another high one waits",
    ],
)
def test_a_large_messages_pages_are_sent_now_unless_a_higher_lane_waits(
    priority: str, waiting: int | None, sends_now: bool
) -> None:
    assert sends_page_now(priority, waiting) is sends_now
