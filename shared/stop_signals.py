"""SIGTERM and SIGINT as a request to stop: the one handler of every long-running service loop."""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

import structlog

log = structlog.get_logger(__name__)


def stop_on_signals(stop: Callable[[], None], event: str) -> None:
    """Call `stop` on SIGTERM or SIGINT, logging `event` with the signal's name."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info(event, signal=signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
