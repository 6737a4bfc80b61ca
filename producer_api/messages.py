"""`/v1/messages`: accept a message durably, and show what happened to it."""

from __future__ import annotations

from typing import Any

from flask import url_for
from flask.views import MethodView
from sqlalchemy import select
from sqlalchemy.orm import Session

from producer_api.auth import current_app_id
from producer_api.blueprint import Blueprint, fail
from producer_api.schemas import MessageAcceptedSchema, MessageCreateSchema, MessageSchema
from shared.amqp.topology import DISPATCH_KEY
from shared.db import OUTBOX_CHANNEL, is_postgresql
from shared.flask_runtime import runtime_of
from shared.ids import new_id, utcnow
from shared.models import Delivery, Event, Message, OutboxEntry
from shared.trace import event_row, record_events

blp = Blueprint("messages", __name__, url_prefix="/v1/messages", description="Send messages")


def store_message(session: Session, app_id: str, body: dict[str, Any]) -> Message:
    """Add the message, its outbox entry and its first event to the caller's transaction."""
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
    session.add(message)
    session.flush()
    session.add(
        OutboxEntry(
            message_id=message.id,
            routing_key=DISPATCH_KEY,
            payload={"message_id": message.id, "app_id": app_id},
            available_at=now,
        )
    )
    record_events(session, [event_row(message.id, "accepted", recipients=len(body["to"]))])
    return message


@blp.route("")
class Messages(MethodView):
    @blp.arguments(MessageCreateSchema)
    @blp.response(202, MessageAcceptedSchema)
    @blp.alt_response(401, description="Missing or unknown API key")
    @blp.alt_response(413, description="Body over 256 KiB")
    def post(self, body: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Accept a message; it is stored and queued before this answers."""
        runtime = runtime_of()
        with runtime.sessions() as session, session.begin():
            message = store_message(session, current_app_id(), body)
            if is_postgresql(runtime.engine):
                # Delivered on commit: wakes the relay at once instead of at its next poll.
                session.connection().exec_driver_sql(f"NOTIFY {OUTBOX_CHANNEL}")
        location = url_for("messages.message", message_id=message.id)
        accepted = {"id": message.id, "status": "accepted", "created_at": message.created_at}
        return accepted, 202, {"Location": location}


@blp.route("/<string:message_id>", endpoint="message")
class MessageResource(MethodView):
    @blp.response(200, MessageSchema)
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
