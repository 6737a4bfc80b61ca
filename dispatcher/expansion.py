"""Writing a message's deliveries: at once for most messages, page by page for large ones.

A message whose topics hold more subscribers than a page (`OMNIPUSH_DISPATCH_PAGE_SIZE`) is
expanded in steps, one transaction each: step 0 writes its direct recipients (users, addresses),
then each topic is read in user id order a page at a time. Each step's deliveries and the
position reached (`message_expansions`: step, last user id) commit together, so a dispatcher
killed mid-way resumes where it stopped, and `ON CONFLICT DO NOTHING` on (message, recipient,
channel) means that nobody is written twice, across topics or across a retried step.

Each step says which of its new deliveries are ready to publish, so the dispatcher publishes a
page as soon as it commits and channel workers start on a large topic while the rest of it is
being written. The message stays undispatched while it expands: a worker settles a message only
once it is `dispatched`, and locks the message's row to do so, so the last step (which marks it
dispatched) and a worker settling it take turns and each sees what the other wrote. A message
canceled or expired meanwhile stops expanding, and the deliveries already written and not yet
sent end with its status. A topic is read as it is while it is expanded: a user subscribed
behind the position reached is not reached by this message.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Connection, bindparam, delete, func, select, tuple_, update

from dispatcher.decisions import DeliveryDecider, Work, message_facts, write_deferred
from dispatcher.targets import delivery_targets
from shared.db import insert_for
from shared.endpoint_kinds import channel_for
from shared.ids import utcnow
from shared.models import Delivery, Endpoint, Message, MessageExpansion, Subscription, table_of
from shared.outbox import enqueue_callbacks
from shared.statuses import message_outcome, standing
from shared.trace import event_row, record_events

#: Statuses of a message that is due and not yet dispatched.
UNDISPATCHED = ("accepted", "scheduled", "queued")

_D = table_of(Delivery)
_M = table_of(Message)
_S = table_of(Subscription)
_X = table_of(MessageExpansion)
_E = table_of(Endpoint)
# Built once: every dispatcher batch asks it.
_EXPANDING = select(_X.c.message_id, _X.c.step, _X.c.after).where(
    _X.c.message_id.in_(bindparam("ids", expanding=True))
)
# INSERT ... ON CONFLICT DO NOTHING: a redelivered message never fails on its existing rows.
# One per store dialect; RETURNING says which rows were new.
_INSERT_DELIVERIES = {
    dialect: insert_for(dialect, _D)
    .on_conflict_do_nothing()
    .returning(_D.c.id, _D.c.message_id, _D.c.app_id, _D.c.channel)
    for dialect in ("postgresql", "sqlite")
}


def _save_progress(dialect: str) -> Any:
    insert = insert_for(dialect, _X)
    return insert.on_conflict_do_update(
        index_elements=["message_id"],
        set_={
            "step": insert.excluded.step,
            "after": insert.excluded.after,
            "updated_at": insert.excluded.updated_at,
        },
    )


_SAVE_PROGRESS = {dialect: _save_progress(dialect) for dialect in ("postgresql", "sqlite")}
#: What the dispatcher reads of a message: to expand it, and for the policy stages.
MESSAGE_COLUMNS = (
    _M.c.id,
    _M.c.app_id,
    _M.c.status,
    _M.c.recipients,
    _M.c.channels,
    _M.c.expires_at,
    _M.c.category,
    _M.c.priority,
    _M.c.content,
    _M.c.dedup_key,
    _M.c.fallback,
    _M.c.created_at,
    _M.c.send_at,
)
_MESSAGE = select(*MESSAGE_COLUMNS).where(_M.c.id == bindparam("message"))
_PROGRESS = select(_X.c.step, _X.c.after).where(_X.c.message_id == bindparam("message"))
_DONE = delete(_X).where(_X.c.message_id == bindparam("message"))
_SET_STATUS = (
    update(_M)
    .where(_M.c.id == bindparam("message"))
    .values(status=bindparam("status"), updated_at=bindparam("now"))
)
_END_WRITTEN = (
    update(_D)
    .where(_D.c.message_id == bindparam("message"), _D.c.status.in_(("pending", "queued")))
    .values(status=bindparam("status"), updated_at=bindparam("now"))
)
_STANDING = select(
    _D.c.id, _D.c.recipient, _D.c.channel, _D.c.status, _D.c.fallback_of, _D.c.attempts
).where(_D.c.message_id == bindparam("message"))
_TOPIC_PAGE = (
    select(_S.c.user_id)
    .where(
        _S.c.app_id == bindparam("app"),
        _S.c.topic_key == bindparam("topic"),
        _S.c.user_id > bindparam("after"),
    )
    .order_by(_S.c.user_id)
    .limit(bindparam("limit"))
)


class Written(NamedTuple):
    """A delivery row as the channel workers need it named."""

    id: str
    message_id: str
    app_id: str
    channel: str

    def payload(self, priority: str) -> dict[str, str]:
        """Its AMQP message to `channel.<name>`, in the lane of its message's `priority`."""
        return {
            "delivery_id": self.id,
            "message_id": self.message_id,
            "app_id": self.app_id,
            "channel": self.channel,
            "priority": priority,
        }


#: The statuses of the rows a step or a batch writes that are to be handed over: queued, or
#: taken by the dispatcher that sends them itself (`take_for_sending`).
HANDED_OVER = ("queued", "sending")


def take_for_sending(rows: list[dict[str, Any]]) -> None:
    """Write `rows` (queued delivery rows) as a worker's claim leaves them, taken for the
    first attempt, for the process that writes them to send them right after its commit
    without claiming them again; one it never sends is a stale claim that the channel's
    worker takes over."""
    for row in rows:
        row["status"], row["attempts"] = "sending", 1


def insert_deliveries(connection: Connection, rows: list[dict[str, Any]]) -> list[Written]:
    """Insert what is not there yet; the rows that were new."""
    if not rows:
        return []
    inserted = connection.execute(_INSERT_DELIVERIES[connection.dialect.name], rows)
    return [Written(*row) for row in inserted]


def first_pages(
    connection: Connection, topics: set[tuple[str, str]], limit: int
) -> dict[tuple[str, str], list[str]]:
    """(app_id, topic key) -> its first `limit` subscribers in user id order, now."""
    members: dict[tuple[str, str], list[str]] = defaultdict(list)
    if not topics:
        return members
    ranked = (
        select(
            _S.c.app_id,
            _S.c.topic_key,
            _S.c.user_id,
            func.row_number()
            .over(partition_by=(_S.c.app_id, _S.c.topic_key), order_by=_S.c.user_id)
            .label("n"),
        )
        .where(tuple_(_S.c.app_id, _S.c.topic_key).in_(list(topics)))
        .subquery()
    )
    rows = connection.execute(
        select(ranked.c.app_id, ranked.c.topic_key, ranked.c.user_id)
        .where(ranked.c.n <= limit)
        .order_by(ranked.c.app_id, ranked.c.topic_key, ranked.c.user_id)
    )
    for app_id, key, user_id in rows:
        members[(app_id, key)].append(user_id)
    return members


def endpoint_channels(
    connection: Connection, endpoints: set[tuple[str, str]]
) -> dict[str, dict[str, str]]:
    """app_id -> endpoint name -> the channel that reaches it, of the (app_id, name) pairs
    that exist."""
    found: dict[str, dict[str, str]] = defaultdict(dict)
    if not endpoints:
        return found
    rows = connection.execute(
        select(_E.c.app_id, _E.c.name, _E.c.kind).where(
            tuple_(_E.c.app_id, _E.c.name).in_(list(endpoints))
        )
    )
    for app_id, name, kind in rows:
        found[app_id][name] = channel_for(kind)
    return found


def endpoints_of(app_id: str, recipients: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """(app_id, name) of each endpoint a message's `to` names."""
    return {(app_id, r["endpoint"]) for r in recipients if "endpoint" in r}


def topics_of(recipients: Sequence[Mapping[str, Any]]) -> list[str]:
    """A message's topics, each once, in the order of its `to` entries."""
    return list(dict.fromkeys(r["topic"] for r in recipients if "topic" in r))


def progress_of(connection: Connection, message_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
    """message id -> (step, last user id) of the messages being expanded in pages."""
    if not message_ids:
        return {}
    rows = connection.execute(_EXPANDING, {"ids": list(message_ids)})
    return {message_id: (step, after or "") for message_id, step, after in rows}


def _no_subscribers(_topic: str) -> list[str]:
    return []


def _page_members(page: list[str], _topic: str) -> list[str]:
    return page


class Step(NamedTuple):
    """What one expansion step did: whether the message needs no more steps, the payloads
    of the deliveries it wrote that are to be handed over, and whether the caller took some of
    them for sending (`Take`)."""

    done: bool
    ready: list[dict[str, str]]
    taken: bool = False


class Take(Protocol):
    """Given a step's priority and the delivery rows it is about to write, takes some of them
    for sending (`take_for_sending`); whether it did."""

    def __call__(self, priority: str, rows: list[dict[str, Any]]) -> bool: ...


class PagedExpansion:
    """Expands one large message a step per call; see the module docstring."""

    def __init__(
        self, page_size: int, reaches: Mapping[str, frozenset[str]], decider: DeliveryDecider
    ) -> None:
        self.page_size = page_size
        self.reaches = reaches
        self.decider = decider
        #: message id -> (app, recipients, (channel, status) -> deliveries) of the messages
        #: this expansion finished, for the dispatcher to report.
        self.finished: dict[str, tuple[str, int, Counter[tuple[str, str]]]] = {}

    def expand_step(
        self, connection: Connection, message_id: str, take: Take | None = None
    ) -> Step:
        """Write the next step's deliveries in the caller's transaction, those that `take`
        takes as taken for sending; done once the message needs no more steps (dispatched, or
        ended without being sent)."""
        postgres = connection.dialect.name == "postgresql"
        # Locked until commit: a cancel waits for this step, and two dispatchers holding the
        # same message (a redelivery) take turns, each step once.
        message = connection.execute(
            _MESSAGE.with_for_update() if postgres else _MESSAGE, {"message": message_id}
        ).first()
        if message is None:
            return Step(True, [])
        now = utcnow()
        if message.status not in UNDISPATCHED:
            if message.status == "canceled":
                self._end(connection, message_id, "canceled", now, event=False)
            else:
                connection.execute(_DONE, {"message": message_id})
            return Step(True, [])
        if message.expires_at is not None and message.expires_at <= now:
            self._end(connection, message_id, "expired", now, event=True)
            return Step(True, [])
        progress = connection.execute(_PROGRESS, {"message": message_id}).first()
        step, after = (progress.step, progress.after or "") if progress is not None else (0, "")
        topics = topics_of(message.recipients)
        if step == 0:
            direct = [r for r in message.recipients if "topic" not in r]
            routes = endpoint_channels(connection, endpoints_of(message.app_id, direct))
            targets = delivery_targets(
                direct,
                message.channels,
                _no_subscribers,
                self.reaches,
                routes.get(message.app_id),
            )
            endpoints = routes.get(message.app_id, {})
            step, after = 1, ""
        else:
            topic = topics[step - 1]
            page = list(
                connection.scalars(
                    _TOPIC_PAGE,
                    {
                        "app": message.app_id,
                        "topic": topic,
                        "after": after,
                        "limit": self.page_size,
                    },
                )
            )
            targets = delivery_targets(
                [{"topic": topic}],
                message.channels,
                functools.partial(_page_members, page),
                self.reaches,
            )
            endpoints = {}
            step, after = (step, page[-1]) if len(page) == self.page_size else (step + 1, "")
        decided = self.decider.decide(
            connection, [Work(message_facts(message), targets, endpoints)], now
        )
        taken = take is not None and take(message.priority, decided.rows)
        inserted = insert_deliveries(connection, decided.rows)
        new_ids = {row.id for row in inserted}
        write_deferred(connection, decided, new_ids)
        record_events(connection, [e for e in decided.events if e["delivery_id"] in new_ids])
        handed = {row["id"] for row in decided.rows if row["status"] in HANDED_OVER}
        ready = [row.payload(message.priority) for row in inserted if row.id in handed]
        if step > len(topics):
            self._finish(connection, message_id, message.app_id, now)
            return Step(True, ready, taken)
        connection.execute(
            _SAVE_PROGRESS[connection.dialect.name],
            {"message_id": message_id, "step": step, "after": after, "updated_at": now},
        )
        return Step(False, ready, taken)

    def _finish(self, connection: Connection, message_id: str, app_id: str, now: datetime) -> None:
        rows = connection.execute(_STANDING, {"message": message_id}).all()
        # What the stages decided: a delivery a worker has taken up since was queued.
        counts = Counter((row.channel, "queued" if row.attempts else row.status) for row in rows)
        self.finished[message_id] = (app_id, len({row.recipient for row in rows}), counts)
        # A message whose topics turned out empty, or whose deliveries the stages all ended,
        # has nothing to wait for.
        settled = (
            message_outcome(standing((row.id, row.status, row.fallback_of) for row in rows))
            if rows
            else "completed"
        )
        status = settled or "dispatched"
        connection.execute(_SET_STATUS, {"message": message_id, "status": status, "now": now})
        events = [event_row(message_id, "dispatched", deliveries=len(rows))]
        if settled is not None:
            events.append(event_row(message_id, settled))
            enqueue_callbacks(connection, [message_id], now)
        record_events(connection, events)
        connection.execute(_DONE, {"message": message_id})

    def _end(
        self, connection: Connection, message_id: str, status: str, now: datetime, event: bool
    ) -> None:
        """The message ends unsent (canceled, expired), and so do the deliveries written."""
        connection.execute(_END_WRITTEN, {"message": message_id, "status": status, "now": now})
        if event:
            connection.execute(_SET_STATUS, {"message": message_id, "status": status, "now": now})
            record_events(connection, [event_row(message_id, status, deliveries=0)])
            enqueue_callbacks(connection, [message_id], now)
        connection.execute(_DONE, {"message": message_id})
