"""marshmallow schemas of the REST bodies; they also generate the OpenAPI document."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from channels.registry import channel_names

CATEGORIES = ("notification", "marketing", "verification")
PRIORITIES = ("high", "normal", "low")
MAX_RECIPIENTS = 1000


def known_channel(name: str) -> None:
    """Only channels this installation has an adapter for are accepted."""
    names = channel_names()
    if name not in names:
        raise ValidationError(f"Must be one of: {', '.join(names)}.")


class StrictSchema(Schema):
    """Rejects unknown fields, as the contract requires."""

    class Meta:
        unknown = RAISE


class RecipientSchema(StrictSchema):
    """One entry of `to`: a user of the app, or a topic (its subscribers at dispatch time)."""

    user_id = fields.String(validate=validate.Length(min=1, max=200))
    topic = fields.String(validate=validate.Length(min=1, max=100))

    @validates_schema
    def exactly_one_kind(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if len(data) != 1:
            raise ValidationError("Give exactly one of user_id or topic.")


class ContentSchema(StrictSchema):
    title = fields.String(required=True, validate=validate.Length(min=1, max=200))
    body = fields.String(load_default="", validate=validate.Length(max=4000))
    url = fields.Url(load_default=None, allow_none=True, validate=validate.Length(max=2000))
    data = fields.Dict(keys=fields.String(), load_default=dict)


class MessageCreateSchema(StrictSchema):
    to = fields.List(
        fields.Nested(RecipientSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_RECIPIENTS),
    )
    channels = fields.List(
        fields.String(validate=known_channel),
        required=True,
        validate=validate.Length(min=1),
    )
    content = fields.Nested(ContentSchema, required=True)
    category = fields.String(load_default="notification", validate=validate.OneOf(CATEGORIES))
    priority = fields.String(load_default="normal", validate=validate.OneOf(PRIORITIES))

    @validates_schema
    def distinct_channels(self, data: dict[str, Any], **_kwargs: Any) -> None:
        channels = data.get("channels") or []
        if len(set(channels)) != len(channels):
            raise ValidationError("Each channel may appear once.", field_name="channels")


MESSAGE_STATUSES = (
    "accepted",
    "scheduled",
    "queued",
    "dispatched",
    "completed",
    "failed",
    "partially_failed",
    "canceled",
    "expired",
)


class MessageListQuery(StrictSchema):
    status = fields.String(load_default=None, validate=validate.OneOf(MESSAGE_STATUSES))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = fields.String(load_default=None, validate=validate.Length(min=1, max=40))


class MessageSummarySchema(Schema):
    id = fields.String()
    status = fields.String()
    channels = fields.List(fields.String())
    category = fields.String()
    priority = fields.String()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class MessagePageSchema(Schema):
    items = fields.List(fields.Nested(MessageSummarySchema))
    next_cursor = fields.String(allow_none=True)


class MessageAcceptedSchema(Schema):
    id = fields.String()
    status = fields.String()
    created_at = fields.DateTime()


class DeliverySchema(Schema):
    id = fields.String()
    user_id = fields.String(allow_none=True)
    address = fields.String(allow_none=True)
    channel = fields.String()
    status = fields.String()
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    sent_at = fields.DateTime(allow_none=True)
    delivered_at = fields.DateTime(allow_none=True)
    read_at = fields.DateTime(allow_none=True)


class EventSchema(Schema):
    at = fields.DateTime()
    stage = fields.String()
    delivery_id = fields.String(allow_none=True)
    detail = fields.Dict()


class MessageSchema(Schema):
    id = fields.String()
    status = fields.String()
    to = fields.List(fields.Dict(), attribute="recipients")
    channels = fields.List(fields.String())
    content = fields.Dict()
    category = fields.String()
    priority = fields.String()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    deliveries = fields.List(fields.Nested(DeliverySchema))
    events = fields.List(fields.Nested(EventSchema))


class TokenRequestSchema(StrictSchema):
    ttl = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))


class TokenSchema(Schema):
    token = fields.String()
    expires_at = fields.DateTime()
