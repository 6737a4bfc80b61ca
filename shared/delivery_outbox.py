"""Outbox rows that hand single deliveries to their channel's queue.

Whoever writes a delivery that is to be sent later than the dispatcher's own publish (one the
quiet hours deferred, a fallback delivery, a dead letter replayed) writes its outbox row in the
same transaction; the relay publishes it once `available_at` has come, in the lane of its
message's priority (`dispatcher.relay`), so no worker can receive the delivery before the store
has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert

from shared.amqp.topology import channel_key
from shared.models import OutboxEntry, table_of

_INSERT = insert(table_of(OutboxEntry))


def delivery_row(
    *,
    delivery_id: str,
    message_id: str,
    app_id: str,
    channel: str,
    priority: str,
    available_at: datetime | None,
    now: datetime,
) -> dict[str, Any]:
    """The outbox row of one delivery, due at `available_at`."""
    return {
        "message_id": message_id,
        "routing_key": channel_key(channel, priority),
        "payload": {
            "delivery_id": delivery_id,
            "message_id": message_id,
            "app_id": app_id,
            "channel": channel,
            "priority": priority,
        },
        "available_at": available_at,
        "created_at": now,
    }


def write_rows(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` (`delivery_row`s) inside the caller's transaction."""
    if rows:
        connection.execute(_INSERT, list(rows))
