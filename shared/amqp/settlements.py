"""Acking consumed messages once what was published for them is confirmed, without waiting.

A consumer that publishes on behalf of what it consumed (the dispatcher: deliveries for a
message) must ack the source only after the broker confirmed every one of them. Waiting for the
confirms before taking the next batch leaves the process idle for a broker round trip each
batch; instead each source's settling is hung on its publications' futures, and the consumer
goes on. The prefetch still bounds how many sources are in flight, and `drain` lets a stopping
consumer settle what it holds before its link closes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future


class Settlements:
    """Calls `settle(confirmed)` once every future of a group is done (see the module
    docstring); `confirmed` is False if any of them failed."""

    def __init__(self) -> None:
        self._outstanding = 0
        self._changed = threading.Condition()

    def when_confirmed(
        self, futures: Sequence[Future[None]], settle: Callable[[bool], None]
    ) -> None:
        """Run `settle` when all of `futures` are done: now if there are none, else on the
        thread that completes the last (the link's I/O thread)."""
        if not futures:
            settle(True)
            return
        remaining = len(futures)
        failed = False
        guard = threading.Lock()
        with self._changed:
            self._outstanding += 1

        def one_done(future: Future[None]) -> None:
            nonlocal remaining, failed
            with guard:
                remaining -= 1
                failed = failed or future.exception() is not None
                last = remaining == 0
            if last:
                try:
                    settle(not failed)
                finally:
                    with self._changed:
                        self._outstanding -= 1
                        self._changed.notify_all()

        for future in futures:
            future.add_done_callback(one_done)

    def drain(self, timeout: float) -> bool:
        """Wait until every group is settled; False if some were not within `timeout`."""
        with self._changed:
            return self._changed.wait_for(lambda: self._outstanding == 0, timeout)
