"""Runs a Flask app factory under gunicorn from inside `omnipush serve`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger


class StructuredLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, sending its lines through the process's structlog set-up."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            log.handlers.clear()
            log.propagate = True


class FactoryApplication(BaseApplication):  # type: ignore[misc]
    """A gunicorn application whose workers each call `factory()` after forking."""

    def __init__(self, factory: Callable[[], Any], options: dict[str, Any]) -> None:
        self._factory = factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._factory()


def serve(factory: Callable[[], Any], **options: Any) -> None:
    """Serve until SIGTERM/SIGINT (gunicorn finishes in-flight requests first)."""
    options.setdefault("graceful_timeout", 10)
    options.setdefault("accesslog", None)
    # Several omnipush servers share a machine; gunicorn's control socket would collide.
    options.setdefault("control_socket_disable", True)
    options.setdefault("logger_class", StructuredLogger)
    FactoryApplication(factory, options).run()
