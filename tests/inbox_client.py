"""A real Socket.IO client of the gateway that records what a browser would see."""

from __future__ import annotations

import threading
import time
from typing import Any

import socketio

from tests.stack import wait_until


class InboxClient:
    """Connects as one user and keeps every `notification` and `unread_count` it receives, and
    when (`time.monotonic()`) each notification came."""

    def __init__(self, gateway_url: str, token: str) -> None:
        self.gateway_url = gateway_url
        self.token = token
        self.notifications: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.unread_counts: list[int] = []
        self.connect_error: Any = None
        self._lock = threading.Lock()
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("notification", self._on_notification)
        self.sio.on("unread_count", self._on_unread_count)
        self.sio.on("connect_error", self._on_connect_error)

    def _on_notification(self, data: dict[str, Any]) -> None:
        arrived = time.monotonic()
        with self._lock:
            self.notifications.append(data)
            self.arrivals.append(arrived)

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

    def arrival_of(self, message_id: str, timeout: float = 15) -> float:
        """When the notification of `message_id` came, waiting up to `timeout` for it."""

        def arrived() -> float | None:
            with self._lock:
                for notification, at in zip(self.notifications, self.arrivals, strict=True):
                    if notification["message_id"] == message_id:
                        return at
            return None

        at: float = wait_until(arrived, timeout, f"the notification of {message_id}", 0.01)
        return at

    def ack(self, ids: list[str]) -> None:
        self.sio.emit("ack", {"ids": ids})

    def read(self, ids: list[str]) -> None:
        self.sio.emit("read", {"ids": ids})

    def close(self) -> None:
        self.sio.disconnect()
