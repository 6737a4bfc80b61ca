"""The inbox in the store: one user's web deliveries, replayed, counted, acknowledged and read.

Every function takes the caller's session and identity and touches only that (app, user)'s web
deliveries; each status change writes its trace event in the same transaction. Status changes
are single conditional UPDATEs, so concurrent acks, reads and sockets never race each other
into a wrong state.

A notification whose message is past its `expires_at` is gone from the inbox: it is neither
replayed, listed, counted, acknowledged nor read. The gateway notices it when the user next
connects, and the delivery ends `expired` then (`expire_overdue`, for many users at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session, aliased

from shared.ids import utcnow
from shared.live_feed import position_key
from shared.models import Delivery, Message, UTCDateTime
from shared.notifications import UNACKNOWLEDGED, UNREAD, notification_payload
from shared.tokens import BrowserIdentity
from shared.trace import event_row, record_events

WEB = "web"
#: Web deliveries that reached the browser side and belong in the inbox listing.
INBOX_STATUSES = (*UNREAD, "read")
#: The most notifications one connect replays; the rest follow on a later connect once acked.
REPLAY_LIMIT = 500
#: The key that marks, in what the replay and catch-up queries return, a notification the web
#: channel is handing out now (its position, if it has one yet, is only in Redis); taken out
#: before it is sent (`ws_gateway.feed.with_positions`).
IN_FLIGHT = "in_flight"
#: Default and largest page of `GET /v1/inbox`.
DEFAULT_PAGE = 50
MAX_PAGE = 200
#: How far a delivery's `sent_at` may be behind the feed's clock (both on this side of Redis).
CLOCK_MARGIN_SECONDS = 30
#: The most ids one ack/read may name.
MAX_IDS = 1000
#: Web deliveries that end `expired` once their message has expired: unread ones that reached
#: the inbox (one still `sending` is the worker's to settle).
EXPIRABLE = ("sent", "delivered")

_ExpiredMessage = aliased(Message)


@dataclass(frozen=True)
class InboxPage:
    """One page of the inbox, newest first, and the cursor of the next page (None at the end)."""

    items: list[dict[str, Any]]
    next_before: str | None


def _expired(now: datetime | BindParameter[datetime]) -> ColumnElement[bool]:
    """The delivery's message has an `expires_at` that has passed."""
    return exists().where(
        _ExpiredMessage.id == Delivery.message_id, _ExpiredMessage.expires_at <= now
    )


# Statements name the user and the time as parameters (`_parameters`), so that those the
# gateway runs on every connect (ten thousand at once after a restart) are built once: building
# one took more of the gateway's CPU than running it.
_MINE = (
    # Not named after columns: UPDATE statements keep those names for their SET values.
    Delivery.app_id == bindparam("app"),
    Delivery.user_id == bindparam("user"),
    Delivery.channel == WEB,
)
_NOT_EXPIRED = ~_expired(bindparam("now"))


def _visible(statuses: Sequence[str]) -> list[ColumnElement[bool]]:
    """The user's web deliveries in one of `statuses` whose message has not expired."""
    return [*_MINE, Delivery.status.in_(statuses), _NOT_EXPIRED]


def _parameters(identity: BrowserIdentity, **more: Any) -> dict[str, Any]:
    """The values of `_visible`'s parameters (and `more`) for `identity`, now."""
    return {"app": identity.app_id, "user": identity.user_id, "now": utcnow(), **more}


def _payload(row: Any) -> dict[str, Any]:
    return notification_payload(
        row.id, row.message_id, row.content or {}, row.category, row.created_at
    )


def _age(row: Any) -> tuple[datetime, datetime, str]:
    # Ids from one dispatcher process strictly increase, but ids minted by two dispatchers in
    # the same millisecond do not order; the delivery's and then the message's time do.
    return (row.created_at, row.message_created_at, row.id)


_ITEMS = (
    select(
        Delivery.id,
        Delivery.message_id,
        Delivery.created_at,
        Message.created_at.label("message_created_at"),
        Message.content,
        Message.category,
        Delivery.receipt,
        Delivery.status,
    )
    .join(Message, Message.id == Delivery.message_id)
    .order_by(Delivery.id)
    .limit(bindparam("limit"))
)
_UNACKNOWLEDGED = _ITEMS.where(*_visible(UNACKNOWLEDGED))
_HANDED_SINCE = _ITEMS.where(
    *_visible(INBOX_STATUSES),
    or_(Delivery.status == "sending", Delivery.sent_at >= bindparam("since")),
    Delivery.id > bindparam("after_id"),
)
_UNREAD_COUNT = select(func.count()).select_from(Delivery).where(*_visible(UNREAD))


def unacknowledged(
    session: Session, identity: BrowserIdentity, limit: int = REPLAY_LIMIT
) -> list[dict[str, Any]]:
    """The user's notifications not acknowledged yet, oldest first, as `notification` payloads.

    The index picks the oldest `limit` by delivery id; those are then put in exact order.
    """
    return _notifications(session, _UNACKNOWLEDGED, _parameters(identity, limit=limit))


def handed_since(
    session: Session,
    identity: BrowserIdentity,
    since: datetime,
    limit: int = REPLAY_LIMIT,
    after_id: str = "",
) -> list[dict[str, Any]]:
    """The user's notifications that the web channel is handing to browsers now or has since
    `since`, acknowledged or not (another tab's ack does not mean this one got it), oldest
    first: what a gateway that lost the live feed may have missed. A page of the first `limit`
    by delivery id after `after_id`."""
    parameters = _parameters(identity, since=since, limit=limit, after_id=after_id)
    return _notifications(session, _HANDED_SINCE, parameters)


def _notifications(
    session: Session, statement: Select[Any], parameters: dict[str, Any]
) -> list[dict[str, Any]]:
    # On the session's connection: Core statements skip the ORM's handling of results.
    rows = session.connection().execute(statement, parameters).all()
    # `position` is the notification's place in the live feed, once the web channel has one.
    return [
        {**_payload(row), "position": row.receipt, IN_FLIGHT: row.status == "sending"}
        for row in sorted(rows, key=_age)
    ]


@dataclass(frozen=True)
class MissedPage:
    """A page of what a tab missed, and the delivery id the next page reads on from (None when
    this page was the last)."""

    items: list[dict[str, Any]]
    next_after: str | None


def missed_since(
    session: Session,
    identity: BrowserIdentity,
    position: str,
    limit: int = REPLAY_LIMIT,
    after_id: str = "",
) -> MissedPage:
    """What a tab that last saw the notification at `position` of the live feed has not seen,
    in the feed's order: those after it, and those being handed out now (no position yet).
    One page of `limit` by delivery id, after `after_id`."""
    # A position starts with Redis's clock in ms: nothing after it was sent much before that.
    after = position_key(position)
    sent = datetime.fromtimestamp(after[0] / 1000, UTC) - timedelta(seconds=CLOCK_MARGIN_SECONDS)
    handed = handed_since(session, identity, sent, limit, after_id)
    items = [
        item
        for item in handed
        if item["position"] is None or position_key(item["position"]) > after
    ]
    items.sort(key=lambda item: (item["position"] is None, _feed_order(item)))
    return MissedPage(items, max(item["id"] for item in handed) if len(handed) >= limit else None)


def _feed_order(item: dict[str, Any]) -> tuple[int, int]:
    return position_key(item["position"]) if item["position"] is not None else (0, 0)


def unread_count(session: Session, identity: BrowserIdentity) -> int:
    """How many of the user's web deliveries are unread."""
    count = session.connection().scalar(_UNREAD_COUNT, _parameters(identity))
    return int(count or 0)


def expire_overdue(session: Session, identities: Sequence[BrowserIdentity]) -> list[str]:
    """Mark the unread web deliveries of these users whose message has expired `expired`, in
    one statement; their ids."""
    if not identities:
        return []
    now = utcnow()
    users = [(identity.app_id, identity.user_id) for identity in identities]
    rows = session.execute(
        update(Delivery)
        .where(
            tuple_(Delivery.app_id, Delivery.user_id).in_(users),
            Delivery.channel == WEB,
            Delivery.status.in_(EXPIRABLE),
            _expired(now),
        )
        .values(status="expired", updated_at=now)
        .returning(Delivery.id, Delivery.message_id),
        execution_options={"synchronize_session": False},
    ).all()
    record_events(
        session.connection(),
        (event_row(r.message_id, "expired", r.id, via="gateway") for r in rows),
    )
    return [r.id for r in rows]


def acknowledge(session: Session, identity: BrowserIdentity, ids: Sequence[str]) -> list[str]:
    """Mark the named unacknowledged deliveries `delivered`; the ids that changed."""
    if not ids:
        return []
    now = utcnow()
    rows = session.execute(
        update(Delivery)
        .where(*_visible(UNACKNOWLEDGED), Delivery.id.in_(list(ids)))
        .values(status="delivered", delivered_at=now, updated_at=now)
        .returning(Delivery.id, Delivery.message_id),
        _parameters(identity),
        execution_options={"synchronize_session": False},
    ).all()
    record_events(
        session.connection(),
        (event_row(r.message_id, "delivered", r.id, via="socket") for r in rows),
    )
    return [r.id for r in rows]


def mark_read(
    session: Session, identity: BrowserIdentity, ids: Sequence[str] | None, via: str
) -> list[str]:
    """Mark the named unread deliveries (all of them when `ids` is None) `read`."""
    if ids is not None and not ids:
        return []
    now = utcnow()
    conditions = _visible(UNREAD)
    if ids is not None:
        conditions.append(Delivery.id.in_(list(ids)))
    rows = session.execute(
        update(Delivery)
        .where(*conditions)
        .values(
            status="read",
            read_at=now,
            updated_at=now,
            delivered_at=func.coalesce(Delivery.delivered_at, literal(now, UTCDateTime())),
        )
        .returning(Delivery.id, Delivery.message_id),
        _parameters(identity),
        execution_options={"synchronize_session": False},
    ).all()
    record_events(
        session.connection(), (event_row(r.message_id, "read", r.id, via=via) for r in rows)
    )
    return [r.id for r in rows]


def _timestamp(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def page(
    session: Session,
    identity: BrowserIdentity,
    *,
    unread_only: bool = False,
    limit: int = DEFAULT_PAGE,
    before: str | None = None,
) -> InboxPage:
    """The user's inbox newest first; `before` (a delivery id) continues after a page.

    Pages follow delivery ids (the index); items within a page are in exact time order.
    """
    conditions = _visible(UNREAD if unread_only else INBOX_STATUSES)
    if before is not None:
        conditions.append(Delivery.id < before)
    rows = session.execute(
        select(
            Delivery.id,
            Delivery.message_id,
            Delivery.created_at,
            Delivery.status,
            Delivery.delivered_at,
            Delivery.read_at,
            Message.created_at.label("message_created_at"),
            Message.content,
            Message.category,
        )
        .join(Message, Message.id == Delivery.message_id)
        .where(*conditions)
        .order_by(Delivery.id.desc())
        .limit(limit + 1),
        _parameters(identity),
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_before = rows[-1].id if more and rows else None
    rows = sorted(rows, key=_age, reverse=True)
    items = [
        {
            **_payload(row),
            "status": row.status,
            "read": row.status == "read",
            "delivered_at": _timestamp(row.delivered_at),
            "read_at": _timestamp(row.read_at),
        }
        for row in rows
    ]
    return InboxPage(items=items, next_before=next_before)
