"""The baseline of the end-to-end benchmark: raw pika on the same broker, in the same run.

Publishes N persistent messages with asynchronous confirms (a window, no wait per message) on
one connection while a second connection consumes them with manual acks. The rate at which
messages come out the other end is what omnipush's pipeline is compared with. The publishing
half (`publish_confirmed`) also fills the dispatcher benchmark's baseline queue.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import pika
from pika.spec import Basic, BasicProperties

BODY = b'{"delivery_id":"dlv_x","message_id":"msg_x","app_id":"app_x","channel":"web"}'


@dataclass(frozen=True)
class BaselineResult:
    """Messages per second through RabbitMQ with confirms and acks."""

    messages: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds


def run_baseline(amqp_url: str, messages: int = 20_000, window: int = 1000) -> BaselineResult:
    queue = f"omnipush-bench-baseline-{uuid.uuid4().hex[:8]}"
    setup = pika.BlockingConnection(pika.URLParameters(amqp_url))
    setup.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    setup.close()
    consumed = threading.Event()
    started = time.monotonic()
    consumer = threading.Thread(target=_consume, args=(amqp_url, queue, messages, consumed))
    consumer.start()
    publish_confirmed(amqp_url, queue, messages, window)
    consumer.join()
    elapsed = time.monotonic() - started
    cleanup = pika.BlockingConnection(pika.URLParameters(amqp_url))
    cleanup.channel().queue_delete(queue)
    cleanup.close()
    return BaselineResult(messages, elapsed)


def _consume(amqp_url: str, queue: str, expected: int, done: threading.Event) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=200)
    for count, (method, _properties, _body) in enumerate(channel.consume(queue), start=1):
        assert method is not None and method.delivery_tag is not None
        channel.basic_ack(method.delivery_tag)
        if count == expected:
            break
    channel.cancel()
    connection.close()
    done.set()


def publish_confirmed(
    amqp_url: str, queue: str, total: int, window: int, body: bytes = BODY
) -> None:
    """Publish `total` persistent copies of `body` to `queue`, keeping up to `window`
    unconfirmed; returns once the broker has confirmed them all."""
    state = {"sent": 0, "confirmed": 0}
    properties = BasicProperties(delivery_mode=2, content_type="application/json")

    def pump(channel: pika.channel.Channel) -> None:
        while state["sent"] < total and state["sent"] - state["confirmed"] < window:
            channel.basic_publish("", queue, body, properties)
            state["sent"] += 1

    def on_confirm(frame: pika.frame.Method) -> None:
        method = frame.method
        assert isinstance(method, Basic.Ack), "the broker refused a message"
        state["confirmed"] = method.delivery_tag if method.multiple else state["confirmed"] + 1
        if state["confirmed"] >= total:
            connection.close()
        else:
            pump(channel_holder[0])

    channel_holder: list[pika.channel.Channel] = []

    def on_channel(channel: pika.channel.Channel) -> None:
        channel_holder.append(channel)
        channel.confirm_delivery(on_confirm, callback=lambda _f: pump(channel))

    connection = pika.SelectConnection(
        pika.URLParameters(amqp_url),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, _reason: c.ioloop.stop(),
    )
    connection.ioloop.start()
