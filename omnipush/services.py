"""Starts each omnipush service with its dependencies, for `omnipush serve`.

The services that answer no HTTP of their own (relay, dispatcher, channel workers, callbacks)
each build one metrics registry, hand its metric groups to what they count, and serve it on
`GET /metrics` while they run (`shared.metrics_endpoint`); the API and the gateway serve theirs
on their own bind address.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

from prometheus_client import CollectorRegistry

from shared.amqp.link import AmqpLink
from shared.gunicorn_app import serve
from shared.metrics_endpoint import process_registry, serving_metrics
from shared.pipeline_metrics import (
    CallbackMetrics,
    ConnectionMetrics,
    DispatchMetrics,
    RelayMetrics,
    WorkerMetrics,
)
from shared.runtime import Runtime
from shared.settings import Settings, default_metrics_port


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

    registry = process_registry()
    connections = ConnectionMetrics("relay", registry)
    runtime = Runtime.build(settings, connections=connections)
    link = AmqpLink(
        settings.amqp_url,
        runtime.topology,
        name=connection_name(settings, "relay"),
        connections=connections,
    )
    relay = OutboxRelay(runtime, link, metrics=RelayMetrics(registry))
    relay.install_signal_handlers()
    with _metrics(settings, registry, "relay", default_metrics_port("relay")):
        relay.run()


def run_dispatcher(settings: Settings) -> None:
    from channels.registry import channel_names
    from channels.web import WebChannel
    from channels.worker import ChannelWorker, channel_context
    from dispatcher.dispatch import WEB, DispatchConsumer

    registry = process_registry()
    connections = ConnectionMetrics("dispatcher", registry)
    metrics = DispatchMetrics(registry)
    runtime = Runtime.build(settings, channels=channel_names(), connections=connections)
    link = AmqpLink(
        settings.amqp_url,
        runtime.topology,
        consume_queues=runtime.topology.dispatch_queues(),
        # Room for the next batch while the last one's confirms (and so its acks) come in.
        prefetch=2 * DispatchConsumer.batch_size,
        name=connection_name(settings, "dispatcher"),
        connections=connections,
    )
    # Sends the web deliveries it writes itself, as the web worker would (and counts them as
    # it does), unless OMNIPUSH_WEB_SENDS leaves them to the worker's queue.
    web = None
    if settings.web_sends == "dispatcher":
        channel = WebChannel(channel_context(runtime, WEB))
        web = ChannelWorker(runtime, link, channel, metrics=WorkerMetrics(WEB, registry))
    consumer = DispatchConsumer(runtime, link, metrics, web=web)
    consumer.install_signal_handlers()
    try:
        with _metrics(settings, registry, "dispatcher", default_metrics_port("dispatcher")):
            consumer.run()
    finally:
        if web is not None:
            web.channel.close()


def run_callbacks(settings: Settings) -> None:
    from dispatcher.callbacks import CallbackSender

    registry = process_registry()
    runtime = Runtime.build(settings, connections=ConnectionMetrics("callbacks", registry))
    sender = CallbackSender(runtime, metrics=CallbackMetrics(registry))
    sender.install_signal_handlers()
    with _metrics(settings, registry, "callbacks", default_metrics_port("callbacks")):
        sender.run()


def run_worker(settings: Settings, channel: str) -> None:
    from channels.registry import channel_class, channel_names
    from channels.worker import ChannelWorker, channel_context

    channel_type = channel_class(channel)
    service = f"worker-{channel}"
    registry = process_registry()
    connections = ConnectionMetrics(service, registry)
    runtime = Runtime.build(settings, channels=channel_names(), connections=connections)
    link = AmqpLink(
        settings.amqp_url,
        runtime.topology,
        consume_queues=runtime.topology.channel_queues(channel),
        name=connection_name(settings, service),
        connections=connections,
    )
    adapter = channel_type(channel_context(runtime, channel))
    worker = ChannelWorker(runtime, link, adapter, metrics=WorkerMetrics(channel, registry))
    worker.install_signal_handlers()
    port = default_metrics_port("worker", channel_names().index(channel))
    try:
        with _metrics(settings, registry, service, port):
            worker.run()
    finally:
        adapter.close()


def _metrics(
    settings: Settings, registry: CollectorRegistry, service: str, default_port: int
) -> AbstractContextManager[tuple[str, int] | None]:
    """Serve `registry` where OMNIPUSH_METRICS_BIND (or the service's default port) says."""
    return serving_metrics(registry, settings.metrics_address(default_port), service)
