"""The browser inbox's shared vocabulary: Socket.IO rooms and the `notification` payload.

The web channel (live) and the gateway (replay on connect) both build notifications here, so a
browser sees one shape whichever way an item reaches it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

#: Web deliveries a browser has not acknowledged yet; replayed on connect.
UNACKNOWLEDGED = ("sending", "sent")
#: Web deliveries shown to the user and not read yet.
UNREAD = ("sending", "sent", "delivered")


def socketio_channel(queue_prefix: str) -> str:
    """The Redis pub/sub channel Socket.IO servers and emitters share."""
    return f"{queue_prefix}.socketio"


def user_room(app_id: str, user_id: str) -> str:
    """The Socket.IO room of one user of one app."""
    return f"user:{app_id}:{user_id}"


def notification_payload(
    delivery_id: str,
    message_id: str,
    content: dict[str, Any],
    category: str,
    created_at: datetime,
) -> dict[str, Any]:
    """The `notification` event body of the contract."""
    return {
        "id": delivery_id,
        "message_id": message_id,
        "title": content.get("title", ""),
        "body": content.get("body", ""),
        "url": content.get("url"),
        "data": content.get("data") or {},
        "category": category,
        "created_at": created_at.isoformat(),
    }
