"""The local inbox of a consuming link: consumed messages, higher lanes handed out first.

A link consumes several queues, the lanes of one kind of work (see shared/amqp/topology.py),
each with its own prefetch. Their messages meet here and leave by lane rank (0 first), in
arrival order within a lane, so a batch taken while thousands of low messages wait locally
still starts with the high one that arrived last.
"""

from __future__ import annotations

import itertools
import queue
from typing import Generic, TypeVar

T = TypeVar("T")


class LaneInbox(Generic[T]):
    """A thread-safe queue that hands out the lowest rank first, then the oldest arrival."""

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, T]] = queue.PriorityQueue()
        # The arrival number breaks ties, so items themselves are never compared.
        self._arrivals = itertools.count()

    def put(self, item: T, rank: int = 0) -> None:
        self._queue.put((rank, next(self._arrivals), item))

    def get(self, timeout: float | None = None) -> T:
        """The next item, waiting up to `timeout`; raises `queue.Empty` when none came."""
        return self._queue.get(timeout=timeout)[2]

    def get_nowait(self) -> T:
        return self._queue.get_nowait()[2]

    def empty(self) -> bool:
        return self._queue.empty()

    def next_rank(self) -> int | None:
        """The rank of the item that would be handed out next, None when there is none (a
        glance: another thread may change it at once)."""
        with self._queue.mutex:
            waiting = self._queue.queue
            return waiting[0][0] if waiting else None

    def qsize(self) -> int:
        return self._queue.qsize()
