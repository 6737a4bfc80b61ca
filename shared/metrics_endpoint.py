"""`GET /metrics` for a service that answers no HTTP of its own, on a thread beside its work.

The relay, the dispatcher, the channel workers and the callbacks sender each serve their
process's registry at the address `Settings.metrics_address` gives. Metrics are for watching a
service, not what it is for: when the address cannot be bound (a second dispatcher on the same
host, say), the service logs one warning and runs on without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = structlog.get_logger(__name__)


def process_registry() -> CollectorRegistry:
    """A registry for one process: the process's CPU, memory and garbage collector metrics,
    which the services' own metric groups (`shared.pipeline_metrics`) are added to."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@contextmanager
def serving_metrics(
    registry: CollectorRegistry, address: tuple[str, int] | None, service: str
) -> Iterator[tuple[str, int] | None]:
    """Serve `registry` at `address` while the block runs; yields where it listens (None when
    metrics are off or the address could not be bound)."""
    if address is None:
        log.info("metrics.off", detail="OMNIPUSH_METRICS_BIND=off: no /metrics endpoint")
        yield None
        return
    host, port = address
    try:
        server, thread = start_http_server(port, host, registry)
    except OSError as error:
        log.warning(
            "metrics.unavailable",
            detail=f"cannot serve /metrics on {host}:{port} ({error.strerror or error}); "
            f"{service} runs on without metrics (set OMNIPUSH_METRICS_BIND to a free "
            "host:port, or to off)",
        )
        yield None
        return
    bound = (host, int(server.server_address[1]))
    log.info("metrics.serving", url=f"http://{host}:{bound[1]}/metrics")
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
