"""One real `omnipush serve api` process (gunicorn and all) for tests that need the server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from shared.settings import Settings
from tests.conftest import service_env
from tests.stack import Service, free_port, wait_http_ok


@dataclass(frozen=True)
class ApiProcess:
    """Where a running API listens, and its process (whose output tests read)."""

    url: str
    service: Service


@contextmanager
def api_process(settings: Settings, **env: str) -> Iterator[ApiProcess]:
    """Serve the API for `settings` (plus `OMNIPUSH_*` overrides in `env`) on a free port."""
    bind = f"127.0.0.1:{free_port()}"
    service = Service(
        args=["serve", "api", "--workers", "1"],
        env=service_env(settings) | {"OMNIPUSH_API_BIND": bind} | env,
    ).start()
    try:
        wait_http_ok(f"http://{bind}/healthz")
        yield ApiProcess(url=f"http://{bind}", service=service)
    finally:
        service.stop()
