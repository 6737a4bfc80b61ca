"""`/v1/messages`: accept a message durably, and show what happened to it."""

from __future__ import annotations

from typing import Any

from flask import url_for
from flask.views import MethodView
from sqlalchemy import Connection, bindparam, insert, select, update

from producer_api.auth import current_app_id
from producer_api.blueprint import Blueprint, fail
from producer_api.schemas import (
    MessageAcceptedSchema,
    MessageCreateSchema,
    MessageListQuery,
    MessagePageSchema,
    MessageSchema,
)
from shared.amqp.topology import DISPATCH_KEY
from shared.flask_runtime import runtime_of
from shared.ids import new_id, utcnow
from shared.models import (
    Delivery,
    Event,
    JsonType,
    Message,
    OutboxEntry,
    Topic,
    UTCDateTime,
    table_of,
)
from shared.trace import event_row, record_events

blp = Blueprint("messages", __name__, url_prefix="/v1/messages", description="Send messages")


_MESSAGES, _OUTBOX, _EVENTS = table_of(Message), table_of(OutboxEntry), table_of(Event)
_NEW_MESSAGE = insert(_MESSAGES).values(
    {column.key: bindparam(f"m_{column.key}", type_=column.type) for column in _MESSAGES.columns}
)
_NEW_OUTBOX_ROW = insert(_OUTBOX).values(
    message_id=bindparam("m_id"),
    routing_key=DISPATCH_KEY,
    payload=bindparam("o_payload", type_=JsonType),
    available_at=bindparam("m_created_at", type_=UTCDateTime()),
    created_at=bindparam("m_created_at", type_=UTCDateTime()),
)
_ACCEPTED_EVENT = insert(_EVENTS).values(
    message_id=bindparam("m_id"),
    delivery_id=None,
    at=bindparam("m_created_at", type_=UTCDateTime()),
    stage="accepted",
    detail=bindparam("e_detail", type_=JsonType),
)
# On PostgreSQL the three inserts travel as one statement: one round trip on the API's hottest
# path (foreign keys are checked at the end of the statement, so the order holds).
_ACCEPT_AS_ONE = _ACCEPTED_EVENT.add_cte(_NEW_MESSAGE.cte("new_message")).add_cte(
    _NEW_OUTBOX_ROW.cte("new_outbox_row")
)


def store_message(connection: Connection, app_id: str, body: dict[str, Any]) -> Message:
    """Add the message, its outbox entry and its `accepted` event to the caller's transaction.

    The outbox insert wakes the relay on commit (a trigger on PostgreSQL, a short poll on SQLite).
    """
    now = utcnow()
    message = Message(
        id=new_id("msg"),
        app_id=app_id,
        status="accepted",
        recipients=body["to"],
        channels=body["channels"],
        content=body["content"],
        category=body["category"],
        priority=body["priority"],
        created_at=now,
        updated_at=now,
    )
    params = {f"m_{column.key}": getattr(message, column.key) for column in _MESSAGES.columns}
    params["o_payload"] = {"message_id": message.id, "app_id": app_id}
    params["e_detail"] = {"recipients": len(body["to"])}
    if connection.dialect.name == "postgresql":
        connection.execute(_ACCEPT_AS_ONE, params)
    else:
        for statement in (_NEW_MESSAGE, _NEW_OUTBOX_ROW, _ACCEPTED_EVENT):
            connection.execute(statement, params)
    return message


#: Statuses a message can still be canceled from: nothing has been sent for it yet.
CANCELABLE = ("accepted", "scheduled", "queued")
_CANCEL = (
    update(_MESSAGES)
    .where(
        _MESSAGES.c.id == bindparam("message"),
        _MESSAGES.c.app_id == bindparam("app"),
        _MESSAGES.c.status.in_(CANCELABLE),
    )
    .values(status="canceled", updated_at=bindparam("now"))
    .returning(_MESSAGES.c.id)
)


def _check_topics(connection: Connection, app_id: str, recipients: list[dict[str, Any]]) -> None:
    """422 naming each `to.N.topic` that this app has no topic for."""
    wanted = {index: r["topic"] for index, r in enumerate(recipients) if "topic" in r}
    if not wanted:
        return
    known = set(
        connection.scalars(
            select(Topic.key).where(Topic.app_id == app_id, Topic.key.in_(set(wanted.values())))
        )
    )
    unknown = {
        f"to.{index}.topic": [f"No topic {key} for this app."]
        for index, key in wanted.items()
        if key not in known
    }
    if unknown:
        fail(422, "The message names topics this app does not have.", errors=unknown)


@blp.route("")
class Messages(MethodView):
    @blp.arguments(MessageListQuery(), location="query")
    @blp.response(200, MessagePageSchema())
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """This app's messages, newest first, a page at a time (`cursor`: the last id seen)."""
        conditions = [Message.app_id == current_app_id()]
        if query["status"] is not None:
            conditions.append(Message.status == query["status"])
        if query["cursor"] is not None:
            conditions.append(Message.id < query["cursor"])
        with runtime_of().engine.connect() as connection:
            rows = connection.execute(
                select(
                    Message.id,
                    Message.status,
                    Message.channels,
                    Message.category,
                    Message.priority,
                    Message.created_at,
                    Message.updated_at,
                )
                .where(*conditions)
                .order_by(Message.id.desc())
                .limit(query["limit"] + 1)
            ).all()
        page = rows[: query["limit"]]
        more = len(rows) > query["limit"]
        return {
            "items": [row._asdict() for row in page],
            "next_cursor": page[-1].id if more else None,
        }

    @blp.arguments(MessageCreateSchema())
    @blp.response(202, MessageAcceptedSchema())
    @blp.alt_response(401, description="Missing or unknown API key")
    @blp.alt_response(413, description="Body over 256 KiB")
    def post(self, body: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Accept a message; it is stored and queued before this answers."""
        app_id = current_app_id()
        with runtime_of().engine.begin() as connection:
            _check_topics(connection, app_id, body["to"])
            message = store_message(connection, app_id, body)
        location = url_for("messages.message", message_id=message.id)
        accepted = {"id": message.id, "status": "accepted", "created_at": message.created_at}
        return accepted, 202, {"Location": location}


def _message_view(message_id: str, app_id: str) -> dict[str, Any]:
    """The message of `app_id` with its deliveries and events; 404 when it has no such one."""
    with runtime_of().sessions() as session:
        message = session.scalar(
            select(Message).where(Message.id == message_id, Message.app_id == app_id)
        )
        if message is None:
            fail(404, f"No message {message_id} for this app.")
        deliveries = session.scalars(
            select(Delivery).where(Delivery.message_id == message_id).order_by(Delivery.id)
        ).all()
        events = session.scalars(
            select(Event).where(Event.message_id == message_id).order_by(Event.id)
        ).all()
    return {
        "id": message.id,
        "status": message.status,
        "recipients": message.recipients,
        "channels": message.channels,
        "content": message.content,
        "category": message.category,
        "priority": message.priority,
        "created_at": message.created_at,
        "updated_at": message.updated_at,
        "deliveries": deliveries,
        "events": events,
    }


@blp.route("/<string:message_id>", endpoint="message")
class MessageResource(MethodView):
    @blp.response(200, MessageSchema())
    @blp.alt_response(404, description="No such message for this app")
    def get(self, message_id: str) -> dict[str, Any]:
        """The message, its deliveries and its timeline of events."""
        return _message_view(message_id, current_app_id())

    @blp.response(200, MessageSchema())
    @blp.alt_response(404, description="No such message for this app")
    @blp.alt_response(409, description="Already dispatched (or finished): too late to cancel")
    def delete(self, message_id: str) -> dict[str, Any]:
        """Cancel a message that has not been dispatched yet."""
        app_id = current_app_id()
        with runtime_of().engine.begin() as connection:
            canceled = connection.execute(
                _CANCEL, {"message": message_id, "app": app_id, "now": utcnow()}
            ).first()
            if canceled is None:
                status = connection.scalar(
                    select(Message.status).where(Message.id == message_id, Message.app_id == app_id)
                )
                if status is None:
                    fail(404, f"No message {message_id} for this app.")
                fail(409, f"Message {message_id} is {status}: too late to cancel.")
            record_events(connection, [event_row(message_id, "canceled")])
        return _message_view(message_id, app_id)
