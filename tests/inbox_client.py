"""A real Socket.IO client of the gateway that records what a browser would see."""

from __future__ import annotations

import threading
from typing import Any

import socketio

from tests.stack import wait_until


class InboxClient:
    """Connects as one user and keeps every `notification` and `unread_count` it receives."""

    def __init__(self, gateway_url: str, token: str) -> None:
        self.gateway_url = gateway_url
        self.token = token
        self.notifications: list[dict[str, Any]] = []
        self.unread_counts: list[int] = []
        self.connect_error: Any = None
        self._lock = threading.Lock()
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("notification", self._on_notification)
        self.sio.on("unread_count", self._on_unread_count)
        self.sio.on("connect_error", self._on_connect_error)

    def _on_notification(self, data: dict[str, Any]) -> None:
        with self._lock:
            self.notifications.append(data)

    def _on_unread_count(self, data: dict[str, Any]) -> None:
        with self._lock:
            self.unread_counts.append(data["count"])

    def _on_connect_error(self, data: Any) -> None:
        self.connect_error = data

    def connect(self) -> InboxClient:
        self.sio.connect(
            self.gateway_url, auth={"token": self.token}, transports=["websocket"], wait_timeout=10
        )
        # The gateway sends unread_count after the replay; from then on the state is live.
        wait_until(lambda: self.unread_counts, 10, "the first unread_count")
        return self

    def ids(self) -> list[str]:
        with self._lock:
            return [n["id"] for n in self.notifications]

    def wait_for(self, count: int, timeout: float = 15) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.notifications) >= count, timeout, f"{count} notifications")
        with self._lock:
            return list(self.notifications)

    def ack(self, ids: list[str]) -> None:
        self.sio.emit("ack", {"ids": ids})

    def read(self, ids: list[str]) -> None:
        self.sio.emit("read", {"ids": ids})

    def close(self) -> None:
        self.sio.disconnect()
