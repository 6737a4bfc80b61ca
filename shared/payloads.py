"""marshmallow schemas of the messages that travel through RabbitMQ, and their codecs."""

from __future__ import annotations

import json
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from shared.amqp.topology import LANES, NORMAL


def _priority() -> fields.String:
    """The message's `priority`, which is also the lane it travels in; messages published
    before there were lanes carry none and are normal."""
    return fields.String(load_default=NORMAL, validate=validate.OneOf(LANES))


class DispatchPayload(Schema):
    """Routing key `dispatch` (and its lanes, `dispatch.high`...): a stored message that is due
    to be expanded into deliveries."""

    class Meta:
        unknown = RAISE

    message_id = fields.String(required=True)
    app_id = fields.String(required=True)
    priority = _priority()


class DeliveryPayload(Schema):
    """Routing key `channel.<name>` (and its lanes, `channel.<name>.low`...): one delivery for a
    channel worker to send."""

    class Meta:
        unknown = RAISE

    delivery_id = fields.String(required=True)
    message_id = fields.String(required=True)
    app_id = fields.String(required=True)
    channel = fields.String(required=True)
    priority = _priority()


def encode(schema: Schema, payload: dict[str, Any]) -> bytes:
    """Validate and serialise a payload for the broker."""
    try:
        loaded = schema.load(payload)
    except ValidationError as error:
        raise ValueError(f"invalid {type(schema).__name__}: {error.messages}") from error
    return json.dumps(loaded, separators=(",", ":")).encode()


def decode(schema: Schema, body: bytes) -> dict[str, Any]:
    """Parse and validate a payload from the broker; raises ValueError when it is malformed."""
    try:
        data = json.loads(body)
    except ValueError as error:
        raise ValueError(f"not JSON: {error}") from error
    try:
        loaded: dict[str, Any] = schema.load(data)
    except ValidationError as error:
        raise ValueError(f"invalid {type(schema).__name__}: {error.messages}") from error
    return loaded
