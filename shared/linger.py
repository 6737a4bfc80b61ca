"""How long a batch waits for more work to join it: a few milliseconds while work is flowing,
none when it finds the process idle.

Waiting lets a busy relay or consumer take one batch instead of many tiny ones (one commit and
one confirm for all of them); for a message that arrives alone the wait only adds latency, in
each hop it passes through. So a batch waits only if the last one ended moments ago.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Work is taken as flowing while batches come less than this far apart.
FLOWING_SECONDS = 0.05


class Linger:
    """Says how long the next batch should wait for more (`seconds`, or 0 when idle)."""

    def __init__(
        self,
        seconds: float,
        flowing_within: float = FLOWING_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.flowing_within = flowing_within
        self.clock = clock
        self._last_work = float("-inf")

    def wait_seconds(self) -> float:
        flowing = self.clock() - self._last_work < self.flowing_within
        return self.seconds if flowing else 0.0

    def worked(self) -> None:
        """A batch was just done."""
        self._last_work = self.clock()
