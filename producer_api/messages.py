"""`/v1/messages`: accept a message durably, and show what happened to it."""

from __future__ import annotations

from typing import Any

from flask import url_for
from flask.views import MethodView
from sqlalchemy import Connection, insert, select

from producer_api.auth import current_app_id
from producer_api.blueprint import Blueprint, fail
from producer_api.schemas import MessageAcceptedSchema, MessageCreateSchema, MessageSchema
from shared.amqp.topology import DISPATCH_KEY
from shared.flask_runtime import runtime_of
from shared.ids import new_id, utcnow
from shared.models import Delivery, Event, Message, OutboxEntry, table_of
from shared.trace import event_row, record_events

blp = Blueprint("messages", __name__, url_prefix="/v1/messages", description="Send messages")


_INSERT_MESSAGE = insert(table_of(Message))
_INSERT_OUTBOX = insert(table_of(OutboxEntry))


def store_message(connection: Connection, app_id: str, body: dict[str, Any]) -> Message:
    """Add the message, its outbox entry and its first event to the caller's transaction.

    Plain INSERTs, no ORM unit of work: this is the hottest path of the API. The outbox insert
    wakes the relay on commit (a trigger on PostgreSQL, a short poll on SQLite).
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
    # Prebuilt Core inserts: on this path, building SQL costs more than running it.
    connection.execute(_INSERT_MESSAGE, _columns(message))
    connection.execute(
        _INSERT_OUTBOX,
        {
            "message_id": message.id,
            "routing_key": DISPATCH_KEY,
            "payload": {"message_id": message.id, "app_id": app_id},
            "available_at": now,
            "created_at": now,
        },
    )
    record_events(connection, [event_row(message.id, "accepted", recipients=len(body["to"]))])
    return message


def _columns(message: Message) -> dict[str, Any]:
    return {column.key: getattr(message, column.key) for column in Message.__table__.columns}


@blp.route("")
class Messages(MethodView):
    @blp.arguments(MessageCreateSchema())
    @blp.response(202, MessageAcceptedSchema())
    @blp.alt_response(401, description="Missing or unknown API key")
    @blp.alt_response(413, description="Body over 256 KiB")
    def post(self, body: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Accept a message; it is stored and queued before this answers."""
        with runtime_of().engine.begin() as connection:
            message = store_message(connection, current_app_id(), body)
        location = url_for("messages.message", message_id=message.id)
        accepted = {"id": message.id, "status": "accepted", "created_at": message.created_at}
        return accepted, 202, {"Location": location}


@blp.route("/<string:message_id>", endpoint="message")
class MessageResource(MethodView):
    @blp.response(200, MessageSchema())
    @blp.alt_response(404, description="No such message for this app")
    def get(self, message_id: str) -> dict[str, Any]:
        """The message, its deliveries and its timeline of events."""
        with runtime_of().sessions() as session:
            message = session.scalar(
                select(Message).where(Message.id == message_id, Message.app_id == current_app_id())
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
