"""Socket.IO room bookkeeping that stays cheap when thousands of sockets leave at once.

python-socketio keeps each namespace's rooms as a map of room -> members and finds a client's
rooms by looking through every room of its namespace. A gateway holds at least two rooms per
socket (the socket's own and its user's), so each disconnect costs time in proportion to the
sockets connected, and 10,000 sockets dropped at once (a network blip, a load balancer
restart, pings timed out under load) held the event loop for about 10 seconds, no notification
moving. `IndexedRooms` also keeps each client's rooms, so that a disconnect touches only those.
"""

from __future__ import annotations

from typing import Any

import socketio


class IndexedRooms(socketio.Manager):
    """A manager mixin: a client's rooms are known without searching every room."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Each client's rooms, in the order it entered them (a dict keeps python-socketio's order).
        self._rooms_of: dict[tuple[str, str], dict[str | None, None]] = {}

    def basic_enter_room(
        self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._rooms_of.setdefault((namespace, sid), {})[room] = None

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.pop(room, None)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **_kwargs: Any) -> None:
        for room in list(self._rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting is not None and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        return [room for room in self._rooms_of.get((namespace, sid), ()) if room is not None]
