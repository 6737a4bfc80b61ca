"""Starts each omnipush service with its dependencies, for `omnipush serve`."""

from __future__ import annotations

import os

from shared.amqp.link import AmqpLink
from shared.gunicorn_app import serve
from shared.runtime import Runtime
from shared.settings import Settings


def connection_name(settings: Settings, service: str) -> str:
    """How this process names its broker connection, e.g. `omnipush dispatcher (pid 42)`."""
    return f"{settings.queue_prefix} {service} (pid {os.getpid()})"


#: Threads per API worker process; each gets a pooled store connection of its own.
API_THREADS = 8


def run_api(settings: Settings, workers: int | None) -> None:
    from producer_api.app import create_app

    serve(
        lambda: create_app(settings, Runtime.build(settings, pool_size=API_THREADS)),
        bind=settings.api_bind,
        workers=workers or 2,
        worker_class="gthread",
        threads=API_THREADS,
    )


def run_gateway(settings: Settings) -> None:
    from ws_gateway.serve import serve_gateway

    serve_gateway(settings)


def run_relay(settings: Settings) -> None:
    from dispatcher.relay import OutboxRelay

    runtime = Runtime.build(settings)
    link = AmqpLink(settings.amqp_url, runtime.topology, name=connection_name(settings, "relay"))
    relay = OutboxRelay(runtime, link)
    relay.install_signal_handlers()
    relay.run()


def run_dispatcher(settings: Settings) -> None:
    from channels.registry import channel_names
    from dispatcher.dispatch import DispatchConsumer

    runtime = Runtime.build(settings, channels=channel_names())
    link = AmqpLink(
        settings.amqp_url, runtime.topology, consume_queues=runtime.topology.dispatch_queues()
    )
    consumer = DispatchConsumer(runtime, link)
    consumer.install_signal_handlers()
    consumer.run()


def run_callbacks(settings: Settings) -> None:
    from dispatcher.callbacks import CallbackSender

    sender = CallbackSender(Runtime.build(settings))
    sender.install_signal_handlers()
    sender.run()


def run_worker(settings: Settings, channel: str) -> None:
    from channels.registry import channel_class, channel_names
    from channels.worker import ChannelWorker, channel_context

    channel_type = channel_class(channel)
    runtime = Runtime.build(settings, channels=channel_names())
    link = AmqpLink(
        settings.amqp_url,
        runtime.topology,
        consume_queues=runtime.topology.channel_queues(channel),
        name=connection_name(settings, f"worker-{channel}"),
    )
    adapter = channel_type(channel_context(runtime, channel))
    worker = ChannelWorker(runtime, link, adapter)
    worker.install_signal_handlers()
    try:
        worker.run()
    finally:
        adapter.close()
