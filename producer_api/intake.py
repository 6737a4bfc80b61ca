"""Message intake: turns validated message bodies into stored messages.

A body that passed its schema still has to name topics, endpoints and a template this app has
(each endpoint on a channel of the message that reaches its kind), and its template has to
render with its params; `resolve` checks a whole batch with one query per kind
and renders each template once per body. `store` then writes the accepted messages, their outbox
rows and their first trace event into the caller's transaction: on commit the relay is woken
(a scheduled message's outbox row waits for its `send_at`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, and_, bindparam, func, insert, select, text
from sqlalchemy.dialects import postgresql

from producer_api.rendering import Unrenderable, render_message
from producer_api.templates import load_template_parts
from shared.amqp.topology import DISPATCH_KEY
from shared.endpoint_kinds import channel_for
from shared.ids import new_id, utcnow
from shared.models import (
    Endpoint,
    Event,
    JsonType,
    Message,
    OutboxEntry,
    Subscription,
    Topic,
    UTCDateTime,
    table_of,
)
from shared.render_budget import RenderBudget
from shared.templating import PART_FIELDS

_MESSAGES, _OUTBOX, _EVENTS = table_of(Message), table_of(OutboxEntry), table_of(Event)
_NEW_MESSAGE = insert(_MESSAGES).values(
    {column.key: bindparam(f"m_{column.key}", type_=column.type) for column in _MESSAGES.columns}
)
_NEW_OUTBOX_ROW = insert(_OUTBOX).values(
    message_id=bindparam("m_id"),
    routing_key=DISPATCH_KEY,
    payload=bindparam("o_payload", type_=JsonType),
    available_at=bindparam("o_available_at", type_=UTCDateTime()),
    created_at=bindparam("m_created_at", type_=UTCDateTime()),
)
_FIRST_EVENT = insert(_EVENTS).values(
    message_id=bindparam("m_id"),
    delivery_id=None,
    at=bindparam("m_created_at", type_=UTCDateTime()),
    stage=bindparam("m_status"),
    detail=bindparam("e_detail", type_=JsonType),
)
# On PostgreSQL a single message's three inserts travel as one statement: one round trip on the
# API's hottest path (foreign keys are checked at the end of the statement, so the order holds).
_STORE_AS_ONE = _FIRST_EVENT.add_cte(_NEW_MESSAGE.cte("new_message")).add_cte(
    _NEW_OUTBOX_ROW.cte("new_outbox_row")
)


def _batch_statement() -> TextClause:
    """Many messages in one PostgreSQL statement, from one JSON array parameter.

    Binding 500 x 16 parameters one by one costs the API more than the whole insert costs the
    store; one JSON document is serialised in C and unpacked by PostgreSQL.
    """
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    message_columns = [column.key for column in _MESSAGES.columns]
    record = ", ".join(
        f"{column.key} {column.type.compile(dialect=dialect)}" for column in _MESSAGES.columns
    )
    names = ", ".join(message_columns)
    return text(
        f"""
        WITH batch AS (
            SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb))
            AS r({record}, available_at TIMESTAMP WITH TIME ZONE, detail JSONB)
        ), new_messages AS (
            INSERT INTO {_MESSAGES.name} ({names}) SELECT {names} FROM batch
        ), new_outbox_rows AS (
            INSERT INTO {_OUTBOX.name} (message_id, routing_key, payload, available_at, created_at)
            SELECT id, :routing_key, jsonb_build_object('message_id', id, 'app_id', app_id),
                   available_at, created_at
            FROM batch
        )
        INSERT INTO {_EVENTS.name} (message_id, delivery_id, at, stage, detail)
        SELECT id, NULL, created_at, status, detail FROM batch
        """
    )


_STORE_MANY = _batch_statement()


def _as_json(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


class Rejected(Exception):
    """A message body that is well-formed but names what this app does not have."""

    def __init__(self, detail: str, errors: dict[str, list[str]]) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


#: The statements' parameter names (`m_id`, ...) for the fields of a message's record.
_PARAMETER_NAMES = [(f"m_{column.key}", column.key) for column in _MESSAGES.columns] + [
    ("o_available_at", "available_at"),
    ("e_detail", "detail"),
]


@dataclass(frozen=True)
class Accepted:
    """A message ready to store: its row by column name (plus its outbox row's `available_at`
    and its first event's `detail`), what the caller answers, and how many recipients it asks
    for (a topic counts its subscribers now: see `producer_api.fanout`)."""

    record: dict[str, Any]
    recipients: int

    @property
    def id(self) -> str:
        message_id: str = self.record["id"]
        return message_id

    @property
    def status(self) -> str:
        status: str = self.record["status"]
        return status

    @property
    def created_at(self) -> datetime:
        created_at: datetime = self.record["created_at"]
        return created_at

    def answer(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "created_at": self.created_at}

    def json_answer(self) -> dict[str, Any]:
        """`answer()` in its JSON form, as the response schema would dump it."""
        return {"id": self.id, "status": self.status, "created_at": self.created_at.isoformat()}

    def params(self) -> dict[str, Any]:
        """The parameters of the one-message statements."""
        record = self.record
        params = {name: record[key] for name, key in _PARAMETER_NAMES}
        params["o_payload"] = {"message_id": record["id"], "app_id": record["app_id"]}
        return params


def _topic_sizes(
    connection: Connection, app_id: str, bodies: Sequence[dict[str, Any]]
) -> dict[str, int]:
    """The app's topics that the bodies name, with their subscriber counts now."""
    wanted = {r["topic"] for body in bodies for r in body["to"] if "topic" in r}
    if not wanted:
        return {}
    rows = connection.execute(
        select(Topic.key, func.count(Subscription.user_id))
        .outerjoin(
            Subscription,
            and_(Subscription.app_id == Topic.app_id, Subscription.topic_key == Topic.key),
        )
        .where(Topic.app_id == app_id, Topic.key.in_(wanted))
        .group_by(Topic.key)
    )
    return {key: int(count) for key, count in rows}


def _endpoint_kinds(
    connection: Connection, app_id: str, bodies: Sequence[dict[str, Any]]
) -> dict[str, str]:
    """The app's endpoints that the bodies name, with their kinds."""
    wanted = {r["endpoint"] for body in bodies for r in body["to"] if "endpoint" in r}
    if not wanted:
        return {}
    rows = connection.execute(
        select(Endpoint.name, Endpoint.kind).where(
            Endpoint.app_id == app_id, Endpoint.name.in_(wanted)
        )
    )
    return {name: kind for name, kind in rows}


def _unreachable_endpoints(body: dict[str, Any], kinds: dict[str, str]) -> dict[str, list[str]]:
    """The field errors of endpoints the app does not have, or that no channel of the message
    reaches (a webhook needs `webhook`, a robot `chat`)."""
    errors: dict[str, list[str]] = {}
    for index, recipient in enumerate(body["to"]):
        name = recipient.get("endpoint")
        if name is None:
            continue
        kind = kinds.get(name)
        if kind is None:
            errors[f"to.{index}.endpoint"] = [f"No endpoint {name} for this app."]
        elif channel_for(kind) not in body["channels"]:
            errors[f"to.{index}.endpoint"] = [
                f"Endpoint {name} is a {kind} endpoint: it needs channel {channel_for(kind)}."
            ]
    return errors


def _recipients(body: dict[str, Any], sizes: dict[str, int]) -> int:
    return sum(sizes[r["topic"]] if "topic" in r else 1 for r in body["to"])


def _unknown_topics(body: dict[str, Any], known: dict[str, int]) -> dict[str, list[str]]:
    return {
        f"to.{index}.topic": [f"No topic {r['topic']} for this app."]
        for index, r in enumerate(body["to"])
        if "topic" in r and r["topic"] not in known
    }


def _templated_content(
    body: dict[str, Any], parts: dict[str, dict[str, str]] | None, budget: RenderBudget
) -> dict[str, Any]:
    """The stored content of a templated message: its parts rendered once, now, so that a
    missing param is the caller's 422 rather than a delivery that fails later."""
    code = body["template"]
    if parts is None:
        raise Rejected(
            "The message names a template this app does not have.",
            {"template": [f"No template {code} for this app."]},
        )
    templated = [channel for channel in body["channels"] if channel in PART_FIELDS]
    missing = [channel for channel in templated if channel not in parts]
    if missing:
        raise Rejected(
            "The template has no part for some of the message's channels.",
            {"template": [f"Template {code} has no part for: {', '.join(missing)}."]},
        )
    try:
        rendered = render_message(parts, body.get("params") or {}, templated, budget)
    except Unrenderable as error:
        raise Rejected(error.detail, error.errors) from error
    # The web inbox and any channel without a part of its own show the first titled part.
    lead = next((rendered[c] for c in ("web", "push", "email") if c in rendered), {})
    return {
        "title": lead.get("title") or lead.get("subject") or "",
        "body": lead.get("body") or lead.get("text") or "",
        "url": lead.get("url") or None,
        "data": {},
        "template": code,
        "parts": rendered,
    }


def _accepted(
    app_id: str, body: dict[str, Any], content: dict[str, Any], recipients: int
) -> Accepted:
    now = utcnow()
    send_at: datetime | None = body["send_at"]
    scheduled = send_at is not None and send_at > now
    status = "scheduled" if scheduled else "accepted"
    detail: dict[str, Any] = {"recipients": len(body["to"])}
    if scheduled:
        assert send_at is not None
        detail["send_at"] = send_at.isoformat()
    record = {
        "id": new_id("msg"),
        "app_id": app_id,
        "status": status,
        "recipients": body["to"],
        "channels": body["channels"],
        "content": content,
        "category": body["category"],
        "priority": body["priority"],
        "send_at": send_at,
        "expires_at": body["expires_at"],
        "dedup_key": body["dedup_key"],
        "callback_url": body["callback_url"],
        "fallback": body.get("fallback"),
        "created_at": now,
        "updated_at": now,
        "available_at": send_at if scheduled else now,
        "detail": detail,
    }
    return Accepted(record, recipients)


def is_plain(body: dict[str, Any]) -> bool:
    """Whether `resolve` needs nothing from the store for this body (no topic, endpoint or
    template)."""
    return body.get("template") is None and not any(
        "topic" in r or "endpoint" in r for r in body["to"]
    )


def plain_connection(engine: Engine) -> AbstractContextManager[Connection]:
    """Where to resolve and store one plain message (`is_plain`) that nothing else goes with.

    On PostgreSQL it is an autocommit connection: the message is a single statement, atomic by
    itself, and BEGIN and COMMIT would be two more round trips. Elsewhere, a transaction.
    """
    if engine.dialect.name == "postgresql":
        return engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    return engine.begin()


def accept_plain(app_id: str, body: dict[str, Any]) -> Accepted:
    """A plain message (`is_plain`) made ready to store: it needs nothing from the store."""
    return _accepted(app_id, body, body["content"], len(body["to"]))


def resolve(
    connection: Connection, app_id: str, bodies: Sequence[dict[str, Any]]
) -> list[Accepted | Rejected]:
    """Check each validated body against this app's topics, endpoints and templates, in order; the
    templates of all the bodies render within one `RenderBudget`."""
    known = _topic_sizes(connection, app_id, bodies)
    kinds = _endpoint_kinds(connection, app_id, bodies)
    templates: dict[str, dict[str, dict[str, str]] | None] = {}
    budget = RenderBudget()
    results: list[Accepted | Rejected] = []
    for body in bodies:
        unknown = _unknown_topics(body, known)
        if unknown:
            results.append(Rejected("The message names topics this app does not have.", unknown))
            continue
        unreachable = _unreachable_endpoints(body, kinds)
        if unreachable:
            detail = "The message names endpoints this app does not have, or cannot reach."
            results.append(Rejected(detail, unreachable))
            continue
        try:
            if body.get("template") is not None:
                code = body["template"]
                if code not in templates:
                    templates[code] = load_template_parts(connection, app_id, code)
                content = _templated_content(body, templates[code], budget)
            else:
                content = body["content"]
        except Rejected as rejected:
            results.append(rejected)
            continue
        results.append(_accepted(app_id, body, content, _recipients(body, known)))
    return results


def store(connection: Connection, accepted: Sequence[Accepted]) -> None:
    """Add the messages, their outbox rows and first events to the caller's transaction."""
    if not accepted:
        return
    if connection.dialect.name == "postgresql":
        # Measured with bench/api.py: for one message the CTE of bound parameters costs
        # PostgreSQL less than unpacking a JSON document; from two on, the document wins.
        if len(accepted) == 1:
            connection.execute(_STORE_AS_ONE, accepted[0].params())
        else:
            document = json.dumps([a.record for a in accepted], default=_as_json)
            connection.execute(_STORE_MANY, {"rows": document, "routing_key": DISPATCH_KEY})
        return
    rows = [a.params() for a in accepted]
    for statement in (_NEW_MESSAGE, _NEW_OUTBOX_ROW, _FIRST_EVENT):
        connection.execute(statement, rows)
