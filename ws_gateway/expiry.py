"""When each socket's token expires: one background task for all the sockets of a process.

A task per socket, asleep until its token expires, would cost each idle socket a greenlet and
its stack; here a heap holds (expiry, socket) and one task looks at what is due once a second.
What is due is handed to a callback that decides, from the socket's current token, whether it
expired (the socket is expelled), was renewed (it is watched again until the new expiry), or
left (it is forgotten).
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable
from datetime import datetime

from flask_socketio import SocketIO

from shared.ids import utcnow

#: How often the task looks for expired tokens: a socket outlives its token by at most this.
CHECK_SECONDS = 1.0


class TokenExpiry:
    """Calls `due(sid)` for each watched socket once the expiry it was watched until passed;
    `due` answers the socket's next expiry to watch until, or None to forget it."""

    def __init__(self, socketio: SocketIO, due: Callable[[str], datetime | None]) -> None:
        self.socketio = socketio
        self.due = due
        self._heap: list[tuple[datetime, str]] = []
        # Made here, in the serving process: under gevent, the cooperative lock.
        self._lock = threading.Lock()

    def watch(self, sid: str, expires_at: datetime) -> None:
        with self._lock:
            heapq.heappush(self._heap, (expires_at, sid))

    def run(self) -> None:
        while True:
            self.socketio.sleep(CHECK_SECONDS)
            self.check(utcnow())

    def check(self, now: datetime) -> int:
        """Hand every socket due by `now` to `due`; how many were due."""
        with self._lock:
            ready = []
            while self._heap and self._heap[0][0] <= now:
                ready.append(heapq.heappop(self._heap)[1])
        for sid in ready:
            later = self.due(sid)
            if later is not None:
                self.watch(sid, later)
        return len(ready)

    def __len__(self) -> int:
        return len(self._heap)
