"""The outbox of status callbacks: a message's final status, kept until its receiver has it.

When a message reaches a final state, `enqueue_callbacks` writes one `callbacks` row in the very
transaction that settles it, addressed to the message's `callback_url` or else its app's
default (`omnipush apps callback APP_ID --url URL`); a message with neither gets none. The
callbacks service (`dispatcher.callbacks`) then POSTs it: `claim_due` takes due rows and pushes
their next attempt a lease ahead before anything is sent, so a sender that dies mid-way leaves
them to be taken again once the lease is over, and `record` writes how each attempt went.

The body follows Standard Webhooks (`{"type", "timestamp", "data"}`), signed with the app's
callback secret: `callback_secret` derives it from the server's secret key and the app id,
so every process can sign without storing a second secret, and the CLI can show it to the
app. Changing `OMNIPUSH_SECRET_KEY` changes every app's callback secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from shared.ids import new_id
from shared.models import App, Callback, Delivery, Message, table_of
from shared.standard_webhooks import PREFIX
from shared.trace import event_row, record_events

_A = table_of(App)
_C = table_of(Callback)
_D = table_of(Delivery)
_M = table_of(Message)
_TARGETS = (
    select(_M.c.id, _M.c.app_id, _M.c.status, func.coalesce(_M.c.callback_url, _A.c.callback_url))
    .join(_A, _A.c.id == _M.c.app_id)
    .where(
        _M.c.id.in_(bindparam("ids", expanding=True)),
        func.coalesce(_M.c.callback_url, _A.c.callback_url).is_not(None),
    )
)
_COUNTS = (
    select(_D.c.message_id, _D.c.status, func.count())
    .where(_D.c.message_id.in_(bindparam("ids", expanding=True)))
    .group_by(_D.c.message_id, _D.c.status)
)
_INSERT = insert(_C)
_DUE = (
    select(_C.c.id, _C.c.message_id, _C.c.app_id, _C.c.url, _C.c.payload, _C.c.attempts)
    .where(_C.c.status == "pending", _C.c.next_attempt_at <= bindparam("now"))
    .order_by(_C.c.next_attempt_at, _C.c.id)
    .limit(bindparam("limit"))
)
_LEASE = (
    update(_C)
    .where(_C.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        attempts=_C.c.attempts + 1,
        next_attempt_at=bindparam("until"),
        updated_at=bindparam("now"),
    )
)
_RECORD = (
    update(_C)
    .where(_C.c.id == bindparam("row_id"))
    .values(
        status=bindparam("status"),
        next_attempt_at=bindparam("next_at"),
        last_error=bindparam("error"),
        updated_at=bindparam("now"),
    )
)


def callback_secret(secret_key: str, app_id: str) -> str:
    """The app's Standard Webhooks secret (`whsec_` and base64 of 32 bytes); see the docstring."""
    key = hmac.new(secret_key.encode(), f"omnipush callback {app_id}".encode(), hashlib.sha256)
    return PREFIX + base64.b64encode(key.digest()).decode()


def enqueue_callbacks(connection: Connection, message_ids: Sequence[str], now: datetime) -> int:
    """Write the callback rows of messages that just reached a final state, in the caller's
    transaction; how many were written."""
    if not message_ids:
        return 0
    targets = connection.execute(_TARGETS, {"ids": list(message_ids)}).all()
    if not targets:
        return 0
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for message_id, status, count in connection.execute(_COUNTS, {"ids": [t.id for t in targets]}):
        counts[message_id][status] = int(count)
    rows = [
        {
            "id": new_id("cb"),
            "message_id": message_id,
            "app_id": app_id,
            "url": url,
            "payload": {
                "type": f"message.{status}",
                "timestamp": now.isoformat(),
                "data": {"id": message_id, "status": status, "deliveries": counts[message_id]},
            },
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for message_id, app_id, status, url in targets
    ]
    connection.execute(_INSERT, rows)
    return len(rows)


@dataclass(frozen=True)
class DueCallback:
    """A callback a sender holds for one attempt (`attempt` counts this one)."""

    id: str
    message_id: str
    app_id: str
    url: str
    payload: dict[str, Any]
    attempt: int


def claim_due(
    connection: Connection, now: datetime, limit: int, lease: timedelta
) -> list[DueCallback]:
    """Take up to `limit` due callbacks for one attempt each, holding them for `lease`."""
    due = (
        _DUE.with_for_update(skip_locked=True) if connection.dialect.name == "postgresql" else _DUE
    )
    rows = connection.execute(due, {"now": now, "limit": limit}).all()
    if not rows:
        return []
    ids = [row.id for row in rows]
    connection.execute(_LEASE, {"ids": ids, "until": now + lease, "now": now})
    return [
        DueCallback(row.id, row.message_id, row.app_id, row.url, row.payload, row.attempts + 1)
        for row in rows
    ]


@dataclass(frozen=True)
class Outcome:
    """How one attempt went: sent, to be tried again at `retry_at`, or given up on."""

    callback: DueCallback
    status: str
    error: str | None = None
    retry_at: datetime | None = None


def record(connection: Connection, outcomes: Iterable[Outcome], now: datetime) -> Counter[str]:
    """Write each outcome and its trace event (`callback_sent`, `callback_retrying`,
    `callback_failed`) in the caller's transaction; how many ended each way."""
    ended: Counter[str] = Counter()
    events = []
    for outcome in outcomes:
        callback = outcome.callback
        connection.execute(
            _RECORD,
            {
                "row_id": callback.id,
                "status": "pending" if outcome.status == "retrying" else outcome.status,
                "next_at": outcome.retry_at or now,
                "error": outcome.error,
                "now": now,
            },
        )
        detail: dict[str, Any] = {"callback": callback.id, "attempt": callback.attempt}
        if outcome.error is not None:
            detail["error"] = outcome.error
        if outcome.retry_at is not None:
            detail["retry_at"] = outcome.retry_at.isoformat()
        events.append(event_row(callback.message_id, f"callback_{outcome.status}", **detail))
        ended[outcome.status] += 1
    record_events(connection, events)
    return ended
