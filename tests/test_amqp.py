"""The AMQP layer against the real RabbitMQ: topology, confirmed publishing, retry tiers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import wait

import pika
import pytest
from sqlalchemy.exc import OperationalError

from shared.amqp.consumer import BatchConsumer
from shared.amqp.link import AmqpLink, Inbound, Outgoing, PublishError
from shared.amqp.topology import Topology, channel_key
from tests.conftest import AMQP_URL, queue_depth, queue_prefix
from tests.stack import wait_until


@pytest.fixture
def topology() -> Iterator[Topology]:
    with queue_prefix() as prefix:
        yield Topology(prefix=prefix, channels=("web",))


@pytest.fixture
def link(topology: Topology) -> Iterator[AmqpLink]:
    built = AmqpLink(AMQP_URL, topology)
    built.start()
    assert built.wait_ready(10), "the link never connected"
    yield built
    built.close()


def test_declaring_twice_is_harmless_and_queues_are_quorum_with_a_delivery_limit(
    topology: Topology,
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        topology.declare_blocking(connection.channel())
        topology.declare_blocking(connection.channel())
    finally:
        connection.close()
    work = {spec.name: spec for spec in topology.queues()}[topology.channel_queue("web")]
    assert work.arguments["x-queue-type"] == "quorum"
    assert work.arguments["x-delivery-limit"] > 0
    names = {spec.name for spec in topology.queues()}
    assert {topology.dispatch_queue, topology.dead_queue} <= names
    assert sum(name.startswith(f"{topology.prefix}.retry.") for name in names) >= 4


def test_many_publishes_are_confirmed_without_one_round_trip_each(
    link: AmqpLink, topology: Topology
) -> None:
    count = 5000
    started = time.monotonic()
    futures = link.publish_batch([Outgoing(channel_key("web"), b"{}") for _ in range(count)])
    done, not_done = wait(futures, timeout=30)
    elapsed = time.monotonic() - started
    assert not not_done and all(f.exception() is None for f in done)
    assert queue_depth(topology.channel_queue("web")) == count
    # One blocking confirm per message manages about 1.3k/s here; a window does far better.
    assert count / elapsed > 1500, f"{count / elapsed:.0f} confirmed publishes/s"


def test_an_unroutable_publish_fails_its_future(link: AmqpLink) -> None:
    (future,) = link.publish_batch([Outgoing("channel.nowhere", b"{}")])
    with pytest.raises(PublishError, match="no queue"):
        future.result(timeout=10)


def test_a_retry_tier_returns_the_message_under_its_own_routing_key(
    link: AmqpLink, topology: Topology
) -> None:
    (future,) = link.publish_batch(
        [
            Outgoing(
                channel_key("web"),
                b'{"retry": 1}',
                headers={"tier": "1s"},
                exchange=topology.retry_exchange,
            )
        ]
    )
    future.result(timeout=10)
    assert queue_depth(topology.retry_queue("1s")) == 1
    web = topology.channel_queue("web")
    wait_until(lambda: queue_depth(web) == 1, 15, "the retried message to come back")
    assert queue_depth(topology.retry_queue("1s")) == 0


def test_publishing_while_disconnected_fails_fast_instead_of_losing_the_message(
    topology: Topology,
) -> None:
    offline = AmqpLink("amqp://guest:guest@127.0.0.1:1/%2F", topology)
    offline.start()
    try:
        (future,) = offline.publish_batch([Outgoing(channel_key("web"), b"{}")])
        with pytest.raises(PublishError, match="not connected"):
            future.result(timeout=5)
    finally:
        offline.close()


class FlakyStore(BatchConsumer):
    """Fails like an unreachable store a few times, then acks and stops."""

    error_pause_seconds = 0.05

    def __init__(self, link: AmqpLink, failures: int) -> None:
        super().__init__(link)
        self.failures = failures
        self.seen: list[list[bool]] = []

    def handle_batch(self, batch: list[Inbound]) -> None:
        self.seen.append([message.redelivered for message in batch])
        if self.failures:
            self.failures -= 1
            raise OperationalError("SELECT 1", {}, Exception("the store went away"))
        for message in batch:
            self.link.ack(message)
        self.stop()


def test_a_batch_is_held_not_requeued_while_the_store_is_unreachable(
    link: AmqpLink, topology: Topology
) -> None:
    link.publish_batch([Outgoing(channel_key("web"), b"{}")])[0].result(timeout=10)
    consumer_link = AmqpLink(AMQP_URL, topology, consume_queue=topology.channel_queue("web"))
    consumer = FlakyStore(consumer_link, failures=2)
    runner = threading.Thread(target=consumer.run)
    runner.start()
    runner.join(30)
    assert not runner.is_alive()
    # Three tries of the same delivery, never handed back to the broker in between.
    assert consumer.seen == [[False], [False], [False]]
    assert queue_depth(topology.channel_queue("web")) == 0
