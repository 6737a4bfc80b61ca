"""The AMQP layer against the real RabbitMQ: topology, confirmed publishing, retry tiers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import wait

import pika
import pytest
from sqlalchemy.exc import OperationalError

from shared.amqp.consumer import BatchConsumer
from shared.amqp.link import AmqpLink, Inbound, Outgoing, PublishError
from shared.amqp.topology import Topology, channel_key
from tests.conftest import AMQP_URL, amqp_url_via, queue_depth, queue_prefix
from tests.fault_proxy import FaultProxy, is_publisher_confirm
from tests.stack import wait_until


@pytest.fixture
def topology() -> Iterator[Topology]:
    with queue_prefix() as prefix:
        yield Topology(prefix=prefix, channels=("web",))


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


def test_many_publishes_are_all_confirmed_and_queued(link: AmqpLink, topology: Topology) -> None:
    count = 5000
    futures = link.publish_batch([Outgoing(channel_key("web"), b"{}") for _ in range(count)])
    done, not_done = wait(futures, timeout=60)
    assert not not_done and all(f.exception() is None for f in done)
    assert queue_depth(topology.channel_queue("web")) == count


def test_a_window_of_publishes_is_in_flight_before_any_confirm(
    broker_proxy: FaultProxy, topology: Topology
) -> None:
    # With every confirm withheld, a publisher waiting for one confirm per message would put
    # one message in the queue; this one puts a whole window there, then waits for room.
    window = 100
    broker_proxy.withhold_replies(from_piece=is_publisher_confirm)
    held = AmqpLink(amqp_url_via(broker_proxy), topology, window=window)
    held.start()
    publisher = threading.Thread(
        target=held.publish_batch,
        args=([Outgoing(channel_key("web"), b"{}") for _ in range(window + 50)],),
        daemon=True,
    )
    try:
        assert held.wait_ready(10), "the link never connected"
        publisher.start()
        web = topology.channel_queue("web")
        wait_until(lambda: queue_depth(web) == window, 15, f"{window} unconfirmed publishes")
        assert publisher.is_alive(), "it published past its window without a confirm"
        assert queue_depth(web) == window
    finally:
        broker_proxy.close()  # the link sees its connection lost: no close handshake to wait for
        held.close()
        if publisher.is_alive():
            publisher.join(10)


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
                headers={"tier": "5s"},
                exchange=topology.retry_exchange,
            )
        ]
    )
    future.result(timeout=10)
    web = topology.channel_queue("web")
    wait_until(lambda: queue_depth(web) == 1, 15, "the retried message to come back")
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        method, properties, body = connection.channel().basic_get(web, auto_ack=True)
    finally:
        connection.close()
    assert body == b'{"retry": 1}' and method.routing_key == channel_key("web")
    # It waited out the tier's TTL in the tier's queue, and only there.
    (death,) = properties.headers["x-death"]
    assert (death["queue"], death["reason"]) == (topology.retry_queue("5s"), "expired")
    assert queue_depth(topology.retry_queue("5s")) == 0


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
    consumer_link = AmqpLink(AMQP_URL, topology, consume_queues=topology.channel_queues("web"))
    consumer = FlakyStore(consumer_link, failures=2)
    runner = threading.Thread(target=consumer.run)
    runner.start()
    runner.join(30)
    assert not runner.is_alive()
    # Three tries of the same delivery, never handed back to the broker in between.
    assert consumer.seen == [[False], [False], [False]]
    assert queue_depth(topology.channel_queue("web")) == 0
