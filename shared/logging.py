"""structlog set-up: JSON lines or readable console lines (by default: console on a terminal).

omnipush's own lines go from structlog straight to stderr, levels below the threshold costing
nothing: a dispatcher writes a line per message, and the standard library's handler, record
and formatter took more of its time than its policy stages. Lines of the libraries that log
through the standard library (pika, gunicorn, ...) get the same format through its handler.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

#: `OMNIPUSH_LOG_FORMAT`: `console` for people, `json` for log collectors.
LogFormat = Literal["console", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("console", "json")


def configure_logging(
    service: str, log_format: LogFormat | None = None, level: str = "INFO"
) -> None:
    """Route structlog and the standard library's logging to stderr in one format.

    Without a `log_format`, a terminal gets console lines and anything else JSON lines.
    """
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    as_json = log_format == "json"
    shared_processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            *shared_processors,
            structlog.processors.format_exc_info if as_json else _identity,
            renderer,
        ],
        logger_factory=_NamedWriteLogger.factory,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if as_json else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pika").setLevel(logging.WARNING)
    # httpx logs every request's whole URL at INFO: a signed query holds numbers and keys.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.contextvars.bind_contextvars(service=service)


class _NamedWriteLogger(structlog.WriteLogger):
    """Writes rendered lines to stderr, and knows the name its module asked for (the
    `logger` of each line)."""

    def __init__(self, name: str) -> None:
        super().__init__(sys.stderr)
        self.name = name

    @classmethod
    def factory(cls, *args: object) -> _NamedWriteLogger:
        return cls(str(args[0]) if args else "")


def _identity(
    _logger: object, _name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    return event_dict
