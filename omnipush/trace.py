"""`omnipush trace MESSAGE_ID`: what happened to one message, one line per event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from shared.models import Delivery, Event, Message


@dataclass(frozen=True)
class Trace:
    """A message's status, its deliveries and its events, oldest first."""

    message: dict[str, Any]
    deliveries: list[dict[str, Any]]
    events: list[dict[str, Any]]


def load_trace(engine: Engine, message_id: str) -> Trace | None:
    """The trace of `message_id` (of any app: this is the operator's view), or None."""
    with engine.connect() as connection:
        message = connection.execute(
            select(
                Message.id,
                Message.app_id,
                Message.status,
                Message.channels,
                Message.category,
                Message.created_at,
            ).where(Message.id == message_id)
        ).first()
        if message is None:
            return None
        deliveries = connection.execute(
            select(
                Delivery.id,
                Delivery.user_id,
                Delivery.channel,
                Delivery.status,
                Delivery.attempts,
                Delivery.last_error,
            )
            .where(Delivery.message_id == message_id)
            .order_by(Delivery.id)
        ).all()
        events = connection.execute(
            select(Event.at, Event.stage, Event.delivery_id, Event.detail)
            .where(Event.message_id == message_id)
            .order_by(Event.at, Event.id)
        ).all()
    return Trace(
        message={**message._asdict(), "created_at": message.created_at.isoformat()},
        deliveries=[row._asdict() for row in deliveries],
        events=[{**row._asdict(), "at": row.at.isoformat()} for row in events],
    )


def render(trace: Trace) -> str:
    """The trace as lines for a terminal."""
    message = trace.message
    lines = [
        f"message {message['id']}  app {message['app_id']}  status {message['status']}  "
        f"channels {','.join(message['channels'])}  created {message['created_at']}"
    ]
    for event in trace.events:
        detail = " ".join(f"{key}={value}" for key, value in sorted(event["detail"].items()))
        target = f"  {event['delivery_id']}" if event["delivery_id"] else ""
        lines.append(f"{event['at']}  {event['stage']:<12}{target}  {detail}".rstrip())
    for delivery in trace.deliveries:
        error = f"  last error: {delivery['last_error']}" if delivery["last_error"] else ""
        lines.append(
            f"delivery {delivery['id']}  {delivery['channel']}  user {delivery['user_id']}  "
            f"{delivery['status']}  attempts {delivery['attempts']}{error}"
        )
    return "\n".join(lines)
