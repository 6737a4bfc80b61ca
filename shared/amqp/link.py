"""One RabbitMQ connection run by its own I/O thread, with asynchronous publisher confirms.

pika's asynchronous adapter is not thread-safe, so the connection lives on a private thread
and the rest of the process talks to it through `add_callback_threadsafe`. Publishing returns
futures that complete when the broker confirms (or refuses) each message, so callers keep a
window of messages in flight instead of waiting for one confirm per message. A consuming link
takes several queues, the priority lanes of its work, highest first: one consumer each on one
channel, each with its own prefetch, so a full low lane never holds back a high message.
Consumed messages land in a local inbox for the caller's thread that hands out the higher lanes
first (`shared.amqp.inbox`); acks are routed back to the I/O thread and dropped if the channel
they belong to has gone (the broker redelivers those messages). Each time the
connection is ready again after it was lost counts as a broker reconnect.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pika
import structlog
from pika.channel import Channel
from pika.exceptions import AMQPError
from pika.spec import Basic, BasicProperties

from shared.amqp.inbox import LaneInbox
from shared.amqp.topology import Topology
from shared.pipeline_metrics import ConnectionMetrics

log = structlog.get_logger(__name__)

MAX_BACKOFF_SECONDS = 30.0


class PublishError(Exception):
    """The broker did not take a message: refused, unroutable, or the connection was lost."""


@dataclass(frozen=True)
class Outgoing:
    """A message to publish: routing key, body and headers (exchange defaults to the main one)."""

    routing_key: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    exchange: str | None = None


@dataclass(frozen=True)
class Inbound:
    """A consumed message; `generation` names the connection it came on (acks need it)."""

    body: bytes
    routing_key: str
    headers: dict[str, Any]
    delivery_tag: int
    redelivered: bool
    generation: int


class AmqpLink:
    """A self-healing RabbitMQ connection: topology, confirmed publishing, optional consuming.

    `consume_queues` are consumed in rank order: a message of the first is handed out before
    any of the second already waiting in the inbox. `prefetch` holds for each of them.
    """

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        consume_queues: Sequence[str] = (),
        prefetch: int = 200,
        window: int = 1000,
        on_ready: Callable[[], None] | None = None,
        name: str = "omnipush",
        connections: ConnectionMetrics | None = None,
    ) -> None:
        self._params = pika.URLParameters(url)
        self._params.heartbeat = 30
        self._params.connection_attempts = 1
        # Shown by RabbitMQ (management UI, rabbitmqctl) so operators see who is connected.
        self._params.client_properties = {"connection_name": name}
        self._topology = topology
        self._consume_queues = tuple(consume_queues)
        self._prefetch = prefetch
        self._on_ready = on_ready
        self.inbox: LaneInbox[Inbound] = LaneInbox()
        self.ready = threading.Event()
        self.consumer_stopped = threading.Event()
        self._window = threading.BoundedSemaphore(window)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="amqp-link", daemon=True)
        self._connection: pika.SelectConnection | None = None
        self._publish_channel: Channel | None = None
        self._consume_channel: Channel | None = None
        self._consumer_tags: list[str] = []
        self._generation = 0
        self._next_tag = 1
        self._pending: OrderedDict[int, tuple[str, Future[None]]] = OrderedDict()
        self._returned: set[str] = set()
        self._backoff = 0.5
        self._connections = connections
        self._was_ready = False
        # Said once per outage, not once per attempt to reconnect.
        self._unreachable_said = False

    @property
    def address(self) -> str:
        return f"{self._params.host}:{self._params.port}"

    # Caller-side API (any thread) ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout)

    def publish_batch(self, items: Sequence[Outgoing]) -> list[Future[None]]:
        """Publish persistent messages; each future completes on the broker's confirm.

        Blocks only while the window of unconfirmed messages is full.
        """
        futures: list[Future[None]] = []
        chunk: list[tuple[Outgoing, Future[None]]] = []
        for item in items:
            if not self._window.acquire(blocking=False):
                self._schedule_publish(chunk)
                chunk = []
                self._window.acquire()
            future: Future[None] = Future()
            futures.append(future)
            chunk.append((item, future))
        self._schedule_publish(chunk)
        return futures

    def ack(self, message: Inbound) -> None:
        self._on_io_thread(lambda: self._settle(message, ack=True, requeue=False))

    def nack(self, message: Inbound, requeue: bool = True) -> None:
        self._on_io_thread(lambda: self._settle(message, ack=False, requeue=requeue))

    def stop_consuming(self) -> None:
        """Ask the broker to stop delivering; `consumer_stopped` is set once it has."""
        if not self._threadsafe(self._cancel_consumer):
            self.consumer_stopped.set()

    def close(self, timeout: float = 10.0) -> None:
        self._closing.set()
        self._threadsafe(self._close_connection)
        self._thread.join(timeout)

    # I/O thread -------------------------------------------------------------------------------

    def _on_io_thread(self, callback: Callable[[], None]) -> None:
        """Run `callback` now if this is the I/O thread (a settlement hung on a confirm is),
        else hand it over: waking the I/O loop costs a system call per callback."""
        if threading.get_ident() == self._thread.ident:
            callback()
        else:
            self._threadsafe(callback)

    def _threadsafe(self, callback: Callable[[], None]) -> bool:
        connection = self._connection
        if connection is None or not connection.is_open:
            return False
        try:
            connection.ioloop.add_callback_threadsafe(callback)
        except (AMQPError, RuntimeError, OSError):
            return False
        return True

    def _schedule_publish(self, chunk: list[tuple[Outgoing, Future[None]]]) -> None:
        if not chunk:
            return
        if not self.ready.is_set() or not self._threadsafe(lambda: self._publish(chunk)):
            self._fail(chunk, PublishError(f"RabbitMQ at {self.address} is not connected"))

    def _fail(self, chunk: list[tuple[Outgoing, Future[None]]], error: Exception) -> None:
        for _item, future in chunk:
            self._window.release()
            future.set_exception(error)

    def _publish(self, chunk: list[tuple[Outgoing, Future[None]]]) -> None:
        channel = self._publish_channel
        if channel is None or not channel.is_open:
            self._fail(chunk, PublishError(f"RabbitMQ at {self.address} is not connected"))
            return
        for item, future in chunk:
            # Names the message in a `basic.return`: its channel's delivery tag, made unique
            # across reconnects (cheaper than a random id, and publishing is this hot).
            publish_id = f"{self._generation}.{self._next_tag}"
            properties = BasicProperties(
                delivery_mode=2,
                content_type="application/json",
                message_id=publish_id,
                headers=item.headers or None,
            )
            exchange = self._topology.exchange if item.exchange is None else item.exchange
            self._pending[self._next_tag] = (publish_id, future)
            self._next_tag += 1
            channel.basic_publish(exchange, item.routing_key, item.body, properties, mandatory=True)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, Basic.Ack)
        tags = [method.delivery_tag]
        if method.multiple:
            tags = [tag for tag in self._pending if tag <= method.delivery_tag]
        for tag in tags:
            entry = self._pending.pop(tag, None)
            if entry is None:
                continue
            publish_id, future = entry
            self._window.release()
            if not ok:
                future.set_exception(PublishError("RabbitMQ refused the message (nack)"))
            elif publish_id in self._returned:
                self._returned.discard(publish_id)
                future.set_exception(PublishError("no queue is bound for this routing key"))
            else:
                future.set_result(None)

    def _on_return(
        self, _channel: Channel, method: Basic.Return, properties: BasicProperties, _body: bytes
    ) -> None:
        log.warning("amqp.unroutable", routing_key=method.routing_key, reply=method.reply_text)
        if properties.message_id:
            self._returned.add(properties.message_id)

    def _settle(self, message: Inbound, *, ack: bool, requeue: bool) -> None:
        channel = self._consume_channel
        if message.generation != self._generation or channel is None or not channel.is_open:
            return  # its channel is gone; the broker redelivers the message
        if ack:
            channel.basic_ack(message.delivery_tag)
        else:
            channel.basic_nack(message.delivery_tag, requeue=requeue)

    def _cancel_consumer(self) -> None:
        channel = self._consume_channel
        tags, self._consumer_tags = self._consumer_tags, []
        if channel is None or not channel.is_open or not tags:
            self.consumer_stopped.set()
            return
        waiting = set(tags)
        for tag in tags:
            channel.basic_cancel(tag, callback=functools.partial(self._on_cancelled, waiting, tag))

    def _on_cancelled(self, waiting: set[str], tag: str, _frame: Any) -> None:
        waiting.discard(tag)
        if not waiting:
            self.consumer_stopped.set()

    def _close_connection(self) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
        elif self._connection is not None:
            self._connection.ioloop.stop()

    def _run(self) -> None:
        while not self._closing.is_set():
            self._connection = pika.SelectConnection(
                self._params,
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_connection_open_error,
                on_close_callback=self._on_connection_closed,
            )
            self._connection.ioloop.start()
            if self._closing.is_set():
                break
            self._closing.wait(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)

    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        # A broker short of memory or disk stops taking what this process publishes.
        connection.add_on_connection_blocked_callback(
            lambda _c, frame: log.warning("amqp.blocked", reason=frame.method.reason)
        )
        connection.add_on_connection_unblocked_callback(
            lambda _c, _frame: log.info("amqp.unblocked")
        )
        connection.channel(on_open_callback=self._on_publish_channel_open)

    def _on_connection_open_error(self, connection: Any, error: BaseException | str) -> None:
        detail = f"RabbitMQ is unreachable at {self.address}: {error}"
        if self._unreachable_said:
            log.debug("amqp.still_unreachable", detail=detail, retry_in_s=self._backoff)
        else:
            self._unreachable_said = True
            log.warning("amqp.unreachable", detail=detail, retry_in_s=self._backoff)
        connection.ioloop.stop()

    def _on_connection_closed(self, connection: Any, reason: BaseException) -> None:
        self.ready.clear()
        self._generation += 1
        lost = list(self._pending.values())
        self._pending.clear()
        self._returned.clear()
        for _publish_id, future in lost:
            self._window.release()
            future.set_exception(PublishError(f"connection to RabbitMQ lost: {reason}"))
        self._publish_channel = self._consume_channel = None
        self._consumer_tags = []
        if not self._closing.is_set():
            log.warning("amqp.disconnected", detail=str(reason), retry_in_s=self._backoff)
        else:
            self.consumer_stopped.set()
        connection.ioloop.stop()

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        # A channel closed by the broker leaves the connection up but useless; start over.
        connection = self._connection
        if connection is not None and connection.is_open and not self._closing.is_set():
            log.warning("amqp.channel_closed", detail=str(reason))
            connection.close()

    def _on_publish_channel_open(self, channel: Channel) -> None:
        self._publish_channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        self._next_tag = 1
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm)
        self._topology.declare_async(channel, self._on_topology_declared)

    def _on_topology_declared(self) -> None:
        if not self._consume_queues:
            self._became_ready()
            return
        assert self._connection is not None
        self._connection.channel(on_open_callback=self._on_consume_channel_open)

    def _on_consume_channel_open(self, channel: Channel) -> None:
        self._consume_channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        # Not global: RabbitMQ applies the limit to each consumer of the channel on its own, so
        # every lane has `prefetch` messages of its own and a full low lane leaves room for high.
        channel.basic_qos(
            prefetch_count=self._prefetch, global_qos=False, callback=lambda _f: self._consume()
        )

    def _consume(self) -> None:
        channel = self._consume_channel
        assert channel is not None
        # One channel for every lane: delivery tags are per channel, so they stay unique and
        # an ack needs no more than the tag and the connection's generation.
        self._consumer_tags = [
            channel.basic_consume(queue, self._on_message_of(rank))
            for rank, queue in enumerate(self._consume_queues)
        ]
        self._became_ready()

    def _became_ready(self) -> None:
        self._backoff = 0.5
        self._unreachable_said = False
        if self._was_ready and self._connections is not None:
            self._connections.broker_reconnected()
        self._was_ready = True
        self.ready.set()
        log.info("amqp.ready", broker=self.address, queues=list(self._consume_queues))
        if self._on_ready is not None:
            self._on_ready()

    def _on_message_of(
        self, rank: int
    ) -> Callable[[Channel, Basic.Deliver, BasicProperties, bytes], None]:
        def on_message(
            _channel: Channel, method: Basic.Deliver, properties: BasicProperties, body: bytes
        ) -> None:
            inbound = Inbound(
                body=body,
                routing_key=method.routing_key,
                headers=dict(properties.headers or {}),
                delivery_tag=method.delivery_tag,
                redelivered=method.redelivered,
                generation=self._generation,
            )
            self.inbox.put(inbound, rank)

        return on_message
