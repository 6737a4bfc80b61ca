"""The trace: rows recording each step of a message and its deliveries, written in batches."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, insert

from shared.ids import utcnow
from shared.models import Event, table_of


def event_row(
    message_id: str, stage: str, delivery_id: str | None = None, **detail: Any
) -> dict[str, Any]:
    """One event as a row for a bulk insert."""
    return {
        "message_id": message_id,
        "delivery_id": delivery_id,
        "stage": stage,
        "at": utcnow(),
        "detail": detail,
    }


_INSERT = insert(table_of(Event))


def record_events(connection: Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Insert events in one statement, inside the caller's transaction."""
    batch = list(rows)
    if batch:
        connection.execute(_INSERT, batch)
