"""`/v1/messages`: accept a message durably, and show what happened to it."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from flask import Response, jsonify, request, url_for
from flask.views import MethodView
from marshmallow import ValidationError
from sqlalchemy import Connection, bindparam, delete, select, update

from producer_api import intake
from producer_api.auth import current_app_id, current_key_owner
from producer_api.fanout import fanout_guard
from producer_api.idempotency import (
    HEADER_DOC,
    REPLAYED_HEADER,
    idempotent,
    remember,
    remembering,
)
from producer_api.metrics import ACCEPTED
from producer_api.outbound_urls import callback_errors, outbound_policy
from producer_api.schemas import (
    BatchCreateDocSchema,
    BatchCreateSchema,
    BatchResultSchema,
    MessageAcceptedSchema,
    MessageCreateSchema,
    MessageListQuery,
    MessagePageSchema,
    MessageSchema,
)
from shared.blueprint import Blueprint, fail
from shared.field_errors import flatten_errors
from shared.flask_runtime import runtime_of
from shared.ids import utcnow
from shared.models import Delivery, Event, Message, OutboxEntry, table_of
from shared.outbox import enqueue_callbacks
from shared.problems import problem_document
from shared.trace import event_row, record_events

blp = Blueprint("messages", __name__, url_prefix="/v1/messages", description="Send messages")

#: A batch may carry up to 500 full messages, more than the API's usual body limit.
BATCH_MAX_BYTES = 4 * 1024 * 1024
EXAMPLE_MESSAGE = {
    "to": [{"user_id": "alice"}],
    "channels": ["web"],
    "content": {"title": "Order shipped", "body": "Your order 42 is on its way."},
}
_ACCEPTED_HEADERS = {
    "Location": {"description": "The message's URL", "schema": {"type": "string"}},
    REPLAYED_HEADER: {
        "description": "`true` when this is the stored answer to an earlier request",
        "schema": {"type": "string", "enum": ["true"]},
    },
}


@blp.before_request
def larger_body_for_batches() -> None:
    if request.endpoint == "messages.batch":
        request.max_content_length = BATCH_MAX_BYTES


_MESSAGES, _OUTBOX = table_of(Message), table_of(OutboxEntry)

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
# A canceled message's outbox row is never relayed (a scheduled one would wait for days). It
# goes first: the relay locks outbox rows before messages, so the same order cannot deadlock.
_DROP_UNPUBLISHED = delete(_OUTBOX).where(
    _OUTBOX.c.message_id == bindparam("message"),
    _OUTBOX.c.published_at.is_(None),
    _OUTBOX.c.message_id.in_(
        select(_MESSAGES.c.id).where(
            _MESSAGES.c.id == bindparam("message"),
            _MESSAGES.c.app_id == bindparam("app"),
            _MESSAGES.c.status.in_(CANCELABLE),
        )
    ),
)


def _connection_for(body: dict[str, Any]) -> AbstractContextManager[Connection]:
    """A transaction, unless the message is plain and no idempotency key is to be recorded."""
    engine = runtime_of().engine
    if not remembering() and intake.is_plain(body):
        return intake.plain_connection(engine)
    return engine.begin()


def accept_one(connection: Connection, app_id: str, body: dict[str, Any]) -> intake.Accepted:
    """Resolve and store one message in the caller's transaction; 422 when it is rejected,
    422 or 429 when it asks for more recipients than its app may have."""
    (result,) = intake.resolve(connection, app_id, [body])
    if isinstance(result, intake.Rejected):
        fail(422, result.detail, errors=result.errors)
    fanout_guard().admit(current_key_owner(), result.recipients)
    intake.store(connection, [result])
    return result


@blp.route("")
class Messages(MethodView):
    @blp.arguments(MessageListQuery(), location="query")
    @blp.response(200, MessagePageSchema())
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """This app's messages, newest first, a page at a time (`cursor`: the last id seen),
        optionally only those of a status or category, or created in a time range."""
        conditions = [Message.app_id == current_app_id()]
        if query["status"] is not None:
            conditions.append(Message.status == query["status"])
        if query["category"] is not None:
            conditions.append(Message.category == query["category"])
        if query["created_after"] is not None:
            conditions.append(Message.created_at >= query["created_after"])
        if query["created_before"] is not None:
            conditions.append(Message.created_at < query["created_before"])
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

    @blp.arguments(MessageCreateSchema(), example=EXAMPLE_MESSAGE)
    @blp.response(202, MessageAcceptedSchema(), headers=_ACCEPTED_HEADERS)
    @blp.alt_response(409, description="The same Idempotency-Key is still in flight")
    @blp.doc(parameters=[HEADER_DOC])
    @idempotent
    def post(self, body: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Accept a message; it is stored and queued (or scheduled) before this answers."""
        refused = callback_errors(outbound_policy(), body)
        if refused:
            fail(422, "The message's callback_url is not one omnipush may call.", errors=refused)
        with _connection_for(body) as connection:
            accepted = accept_one(connection, current_app_id(), body)
            location = url_for("messages.message", message_id=accepted.id)
            remember(connection, 202, accepted.json_answer(), {"Location": location})
        ACCEPTED.inc()
        return accepted.answer(), 202, {"Location": location}


@blp.route("/batch", endpoint="batch")
class MessageBatch(MethodView):
    @blp.arguments(BatchCreateSchema(), example={"messages": [EXAMPLE_MESSAGE]})
    @blp.response(200, BatchResultSchema())
    @blp.alt_response(409, description="The same Idempotency-Key is still in flight")
    @blp.alt_response(413, description="Body over 4 MiB")
    @blp.doc(
        parameters=[HEADER_DOC],
        requestBody={"content": {"application/json": {"schema": BatchCreateDocSchema}}},
    )
    @idempotent
    def post(self, body: dict[str, list[dict[str, Any]]]) -> Response:
        """Accept up to 500 messages in one transaction, with a result per item in order.

        An item that is not valid is rejected with its errors; the others are accepted, unless
        together they ask for more recipients than the app may have (422 or 429).
        """
        app_id = current_app_id()
        schema = MessageCreateSchema()
        outbound = outbound_policy()
        results: list[dict[str, Any]] = []
        valid: list[tuple[int, dict[str, Any]]] = []
        for index, item in enumerate(body["messages"]):
            try:
                loaded = schema.load(item)
            except ValidationError as error:
                results.append(_rejected(index, "The message is not valid; see errors.", error))
                continue
            refused = callback_errors(outbound, loaded)
            if refused:
                detail = "The message's callback_url is not one omnipush may call."
                results.append(_rejected(index, detail, refused))
            else:
                valid.append((index, loaded))
        with runtime_of().engine.begin() as connection:
            resolved = intake.resolve(connection, app_id, [item for _index, item in valid])
            accepted = [r for r in resolved if isinstance(r, intake.Accepted)]
            fanout_guard().admit(
                current_key_owner(), sum(a.recipients for a in accepted), "messages"
            )
            intake.store(connection, accepted)
            for (index, _item), result in zip(valid, resolved, strict=True):
                if isinstance(result, intake.Rejected):
                    results.append(_rejected(index, result.detail, result.errors))
                else:
                    results.append({"index": index, **result.json_answer()})
            results.sort(key=lambda r: int(r["index"]))
            # Already in its JSON form: 500 results through the response schema would cost
            # more than storing the messages.
            answer = {
                "accepted": len(accepted),
                "rejected": len(results) - len(accepted),
                "results": results,
            }
            remember(connection, 200, answer, {})
        ACCEPTED.inc(len(accepted))
        return jsonify(answer)


def _rejected(
    index: int, detail: str, errors: ValidationError | dict[str, list[str]]
) -> dict[str, Any]:
    if isinstance(errors, ValidationError):
        errors = flatten_errors(errors.messages)
    error = problem_document(422, "Unprocessable Entity", detail, errors=errors)
    return {"index": index, "status": "rejected", "error": error}


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
            # In the order things happened (as `omnipush trace` shows them): the relay's
            # `queued` is committed after the broker's confirm, maybe after `dispatched`.
            select(Event).where(Event.message_id == message_id).order_by(Event.at, Event.id)
        ).all()
    return {
        "id": message.id,
        "status": message.status,
        "recipients": message.recipients,
        "channels": message.channels,
        "content": message.content,
        "template": message.content.get("template"),
        "category": message.category,
        "priority": message.priority,
        "send_at": message.send_at,
        "expires_at": message.expires_at,
        "dedup_key": message.dedup_key,
        "callback_url": message.callback_url,
        "fallback": message.fallback,
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
            connection.execute(_DROP_UNPUBLISHED, {"message": message_id, "app": app_id})
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
            enqueue_callbacks(connection, [message_id], utcnow())
        return _message_view(message_id, app_id)
