"""Publisher benchmark: omnipush's confirming publisher against one blocking confirm per message.

Both publish the same persistent messages into a quorum queue of their own on the same broker,
in the same run: `shared.amqp.link.AmqpLink` with asynchronous confirms and a window, and
pika's `BlockingChannel` in confirm mode, which waits for each confirm. Prints both rates and
their ratio, and exits 1 when the link confirms fewer than `--min-rate` publishes a second (one
blocking confirm per message manages about 1.2k/s on the development machine, so 1,500 is the
floor a window must clear). Run with `python -m bench.publish` (also part of `make bench`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from concurrent.futures import wait

import pika

from shared.amqp.link import AmqpLink, Outgoing
from shared.amqp.topology import Topology, channel_key
from shared.settings import DEFAULT_AMQP_URL

BODY = b'{"delivery_id":"dlv_x","message_id":"msg_x","app_id":"app_x","channel":"web"}'


def confirming_link(amqp_url: str, count: int) -> float:
    topology = Topology(prefix=f"omnipush-bench-{uuid.uuid4().hex[:8]}", channels=("web",))
    link = AmqpLink(amqp_url, topology)
    link.start()
    try:
        if not link.wait_ready(15):
            raise RuntimeError("RabbitMQ did not answer")
        started = time.monotonic()
        futures = link.publish_batch([Outgoing(channel_key("web"), BODY) for _ in range(count)])
        done, not_done = wait(futures, timeout=120)
        elapsed = time.monotonic() - started
        if not_done or any(f.exception() for f in done):
            raise RuntimeError("some publishes were not confirmed")
        return count / elapsed
    finally:
        link.close()
        _delete(amqp_url, topology)


def blocking_confirms(amqp_url: str, count: int) -> float:
    queue = f"omnipush-bench-blocking-{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.confirm_delivery()
    properties = pika.BasicProperties(delivery_mode=2)
    started = time.monotonic()
    for _ in range(count):
        channel.basic_publish("", queue, BODY, properties)
    elapsed = time.monotonic() - started
    channel.queue_delete(queue)
    connection.close()
    return count / elapsed


def _delete(amqp_url: str, topology: Topology) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    topology.delete_blocking(connection.channel())
    connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--blocking-messages", type=int, default=3_000)
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--min-rate", type=float, default=1500.0)
    args = parser.parse_args()
    blocking = blocking_confirms(args.amqp_url, args.blocking_messages)
    windowed = confirming_link(args.amqp_url, args.messages)
    result = {
        "blocking_confirm_per_message_per_s": round(blocking, 1),
        "asynchronous_confirms_per_s": round(windowed, 1),
        "ratio": round(windowed / blocking, 2),
    }
    print(json.dumps(result, indent=2))
    if windowed < args.min_rate:
        print(f"below the floor of {args.min_rate:.0f} confirmed publishes/s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
