"""The dead letters: deliveries that failed for good, listed and replayed by an operator.

The channel worker writes one `DeadLetter` row in the transaction that records a delivery
`failed` (permanent, or out of attempts). Listing reads them per app and channel in id order,
a page at a time. Replaying puts the delivery back in the queue: `queued` with its attempts
reset, its message re-opened (`dispatched`) if it had settled, a `replayed` trace event, and
its AMQP message republished to the channel's queue, in the lane of its message's priority.

A replayed row is kept and marked (`replayed_at`), not deleted: the history of what was
replayed stays readable (`include_replayed`), and a second replay of the same row is refused
(already replayed), so it cannot send twice. A delivery that fails again gets a new row.
The AMQP copy the worker parked in the dead queue stays there (a queue cannot give up one
chosen message); the row is what an operator works from. A row is written for every delivery
that failed for good, also one a fallback channel took over (`channels.fallback`): replaying
that one sends on its first channel again, which is the operator's call.

The store update and the publish are one step through the outbox: in one transaction the rows
are updated and an outbox row per delivery is written, which the relay publishes to the
channel's queue (`dispatcher.relay`). A worker can therefore never receive a replayed delivery
before the store says it is `queued` again, and a replay needs only the store: with the broker
away it waits in the outbox and goes out once the relay reaches the broker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from shared.delivery_outbox import delivery_row, write_rows
from shared.ids import utcnow
from shared.models import DeadLetter, Delivery, Message
from shared.trace import event_row, record_events

#: Rows replayed per transaction by `replay_matching`.
REPLAY_BATCH = 100
#: Message statuses a replay re-opens: the message settled and will settle again.
SETTLED = ("completed", "failed", "partially_failed")


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters: of one app and/or one channel (None: any)."""

    app_id: str | None = None
    channel: str | None = None


@dataclass(frozen=True)
class DeadLetterView:
    """One dead letter as listed."""

    id: str
    delivery_id: str
    message_id: str
    app_id: str
    channel: str
    attempts: int
    reason: str | None
    failed_at: datetime
    replayed_at: datetime | None


class ReplayOutcome(StrEnum):
    """What replaying one dead letter did."""

    REPLAYED = "replayed"
    ALREADY_REPLAYED = "already_replayed"
    UNKNOWN = "unknown"


def _where(query: Any, chosen: DeadLetterFilter, include_replayed: bool) -> Any:
    if chosen.app_id is not None:
        query = query.where(DeadLetter.app_id == chosen.app_id)
    if chosen.channel is not None:
        query = query.where(DeadLetter.channel == chosen.channel)
    if not include_replayed:
        query = query.where(DeadLetter.replayed_at.is_(None))
    return query


def _view(row: Any) -> DeadLetterView:
    return DeadLetterView(
        id=row.id,
        delivery_id=row.delivery_id,
        message_id=row.message_id,
        app_id=row.app_id,
        channel=row.channel,
        attempts=row.attempts,
        reason=row.error,
        failed_at=row.created_at,
        replayed_at=row.replayed_at,
    )


_COLUMNS = (
    DeadLetter.id,
    DeadLetter.delivery_id,
    DeadLetter.message_id,
    DeadLetter.app_id,
    DeadLetter.channel,
    DeadLetter.attempts,
    DeadLetter.error,
    DeadLetter.created_at,
    DeadLetter.replayed_at,
)


def list_dead_letters(
    connection: Connection,
    chosen: DeadLetterFilter,
    *,
    limit: int = 100,
    cursor: str | None = None,
    include_replayed: bool = False,
) -> tuple[list[DeadLetterView], str | None]:
    """One page of dead letters in id order (oldest first) after `cursor`, and the cursor of
    the next page (None on the last). Replayed ones only with `include_replayed`."""
    query = _where(select(*_COLUMNS), chosen, include_replayed)
    if cursor is not None:
        query = query.where(DeadLetter.id > cursor)
    rows = connection.execute(query.order_by(DeadLetter.id).limit(limit + 1)).all()
    page = [_view(row) for row in rows[:limit]]
    return page, page[-1].id if len(rows) > limit else None


def find_dead_letter(
    connection: Connection, dead_id: str, app_id: str | None = None
) -> DeadLetterView | None:
    """The dead letter `dead_id` (of `app_id`, when given), or None."""
    query = select(*_COLUMNS).where(DeadLetter.id == dead_id)
    if app_id is not None:
        query = query.where(DeadLetter.app_id == app_id)
    row = connection.execute(query).first()
    return None if row is None else _view(row)


def replay(engine: Engine, ids: Sequence[str]) -> list[str]:
    """Replay the dead letters `ids` not replayed yet, in one transaction (see the module
    docstring); returns the ids replayed."""
    if not ids:
        return []
    now = utcnow()
    with engine.begin() as connection:
        taken = connection.execute(
            update(DeadLetter)
            .where(DeadLetter.id.in_(list(ids)), DeadLetter.replayed_at.is_(None))
            .values(replayed_at=now)
            .returning(
                DeadLetter.id,
                DeadLetter.delivery_id,
                DeadLetter.message_id,
                DeadLetter.app_id,
                DeadLetter.channel,
            )
        ).all()
        if not taken:
            return []
        requeued = set(
            connection.scalars(
                update(Delivery)
                .where(
                    Delivery.id.in_([row.delivery_id for row in taken]),
                    Delivery.status == "failed",
                )
                .values(status="queued", attempts=0, last_error=None, updated_at=now)
                .returning(Delivery.id)
            )
        )
        reopened = set(
            connection.scalars(
                update(Message)
                .where(
                    Message.id.in_({row.message_id for row in taken}), Message.status.in_(SETTLED)
                )
                .values(status="dispatched", updated_at=now)
                .returning(Message.id)
            )
        )
        priorities = {
            message_id: priority
            for message_id, priority in connection.execute(
                select(Message.id, Message.priority).where(
                    Message.id.in_({row.message_id for row in taken})
                )
            )
        }
        outgoing = []
        events = []
        for row in taken:
            # A delivery no longer `failed` (replayed through another of its rows, or sent
            # since) is not sent again: its row is only marked.
            if row.delivery_id not in requeued:
                continue
            events.append(
                event_row(
                    row.message_id,
                    "replayed",
                    row.delivery_id,
                    dead_letter=row.id,
                    reopened=row.message_id in reopened,
                )
            )
            outgoing.append(
                delivery_row(
                    delivery_id=row.delivery_id,
                    message_id=row.message_id,
                    app_id=row.app_id,
                    channel=row.channel,
                    priority=priorities[row.message_id],
                    available_at=now,
                    now=now,
                )
            )
        record_events(connection, events)
        write_rows(connection, outgoing)
    return [row.id for row in taken]


def replay_one(engine: Engine, dead_id: str, app_id: str | None = None) -> ReplayOutcome:
    """Replay one dead letter (of `app_id`, when given)."""
    with engine.connect() as connection:
        found = find_dead_letter(connection, dead_id, app_id)
    if found is None:
        return ReplayOutcome.UNKNOWN
    if found.replayed_at is not None or not replay(engine, [dead_id]):
        return ReplayOutcome.ALREADY_REPLAYED
    return ReplayOutcome.REPLAYED


def replay_matching(
    engine: Engine,
    chosen: DeadLetterFilter,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Replay every dead letter under `chosen` waiting for a replay, `REPLAY_BATCH` per
    transaction; `progress(done, total)` after each batch. Returns how many were replayed."""
    with engine.connect() as connection:
        ids = list(
            connection.scalars(
                _where(select(DeadLetter.id), chosen, include_replayed=False).order_by(
                    DeadLetter.id
                )
            )
        )
    done = 0
    for start in range(0, len(ids), REPLAY_BATCH):
        done += len(replay(engine, ids[start : start + REPLAY_BATCH]))
        if progress is not None:
            progress(done, len(ids))
    return done
