"""marshmallow schemas of the REST bodies; they also generate the OpenAPI document."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from channels.registry import channel_names, channels_reaching
from producer_api.fields import PhoneNumber, StrictSchema
from producer_api.quick_check import quick_load
from producer_api.user_schemas import FullMatch
from producer_api.vocabulary import CATEGORIES, MAX_RECIPIENTS, PRIORITIES
from shared.endpoint_kinds import NAME, NAME_RULE
from shared.ids import utcnow
from shared.openapi import ProblemSchema

MAX_SCHEDULE_AHEAD = timedelta(days=30)
#: The kinds of a `to` entry; the address kinds need a channel that reaches bare addresses.
RECIPIENT_KINDS = ("user_id", "topic", "email", "phone", "endpoint")
ADDRESS_KINDS = ("email", "phone", "endpoint")


def known_channel(name: str) -> None:
    """Only channels this installation has an adapter for are accepted."""
    names = channel_names()
    if name not in names:
        raise ValidationError(f"Must be one of: {', '.join(names)}.")


class RecipientSchema(StrictSchema):
    """One entry of `to`: a user of the app, a topic (its subscribers at dispatch time), a
    bare email address or phone number that is nobody's user, or one of the app's endpoints
    (`PUT /v1/endpoints/{name}`: a webhook or a chat robot)."""

    user_id = fields.String(validate=validate.Length(min=1, max=200))
    topic = fields.String(validate=validate.Length(min=1, max=100))
    email = fields.Email(validate=validate.Length(max=320))
    phone = PhoneNumber()
    endpoint = fields.String(validate=FullMatch(NAME, error=NAME_RULE))

    @validates_schema
    def exactly_one_kind(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if len(data) != 1:
            raise ValidationError(f"Give exactly one of {', '.join(RECIPIENT_KINDS)}.")


class ContentSchema(StrictSchema):
    title = fields.String(required=True, validate=validate.Length(min=1, max=200))
    body = fields.String(load_default="", validate=validate.Length(max=4000))
    url = fields.Url(
        load_default=None,
        allow_none=True,
        schemes={"http", "https"},
        validate=validate.Length(max=2000),
        metadata={"format": "uri"},
    )
    data = fields.Dict(keys=fields.String(), load_default=dict)


class MessageCreateSchema(StrictSchema):
    """The body of `POST /v1/messages` (and each item of a batch).

    `load` first tries the quick check of the common shape (see `producer_api.quick_check`);
    whatever that declines is loaded, or refused with field errors, by the schema itself.
    """

    def load(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs:
            quick = quick_load(data, channel_names)
            if quick is not None:
                return quick
        return super().load(data, *args, **kwargs)

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
    content = fields.Nested(ContentSchema, allow_none=True)
    template = fields.String(allow_none=True, validate=validate.Length(min=1, max=100))
    params = fields.Dict(keys=fields.String(), allow_none=True)
    category = fields.String(load_default="notification", validate=validate.OneOf(CATEGORIES))
    priority = fields.String(load_default="normal", validate=validate.OneOf(PRIORITIES))
    send_at = fields.AwareDateTime(load_default=None, allow_none=True)
    expires_at = fields.AwareDateTime(load_default=None, allow_none=True)
    dedup_key = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(min=1, max=200)
    )
    callback_url = fields.Url(
        load_default=None,
        allow_none=True,
        schemes={"http", "https"},
        validate=validate.Length(max=2000),
        metadata={"format": "uri"},
    )
    # Channels to try in turn, per recipient, when a delivery fails for good (channels.fallback).
    fallback = fields.List(
        fields.String(validate=known_channel),
        allow_none=True,
        validate=validate.Length(min=1),
    )

    @validates_schema
    def distinct_channels(self, data: dict[str, Any], **_kwargs: Any) -> None:
        for name in ("channels", "fallback"):
            listed = data.get(name) or []
            if len(set(listed)) != len(listed):
                raise ValidationError("Each channel may appear once.", field_name=name)

    @validates_schema
    def content_or_template(self, data: dict[str, Any], **_kwargs: Any) -> None:
        templated = data.get("template") is not None
        if (data.get("content") is not None) == templated:
            raise ValidationError("Give either content or template (with params).", "content")
        if data.get("params") is not None and not templated:
            raise ValidationError("params go with a template.", "params")

    @validates_schema
    def addresses_have_a_channel(self, data: dict[str, Any], **_kwargs: Any) -> None:
        channels = set(data.get("channels") or [])
        errors: dict[str, list[str]] = {}
        for index, recipient in enumerate(data.get("to") or []):
            for kind in ADDRESS_KINDS:
                if kind in recipient and not channels & set(channels_reaching(kind)):
                    reaching = ", ".join(channels_reaching(kind)) or "none installed"
                    errors[f"to.{index}.{kind}"] = [
                        f"None of the channels delivers to a bare {kind} (reaching: {reaching})."
                    ]
        if errors:
            raise ValidationError(errors)

    @validates_schema
    def sane_times(self, data: dict[str, Any], **_kwargs: Any) -> None:
        now = utcnow()
        send_at: datetime | None = data.get("send_at")
        expires_at: datetime | None = data.get("expires_at")
        if send_at is not None and send_at > now + MAX_SCHEDULE_AHEAD:
            raise ValidationError("Must be at most 30 days ahead.", "send_at")
        if expires_at is not None and expires_at <= max(now, send_at or now):
            raise ValidationError("Must be later than now and than send_at.", "expires_at")


MAX_BATCH = 500


class BatchCreateSchema(StrictSchema):
    """`POST /v1/messages/batch` as parsed: each item is validated on its own, so one bad item
    is reported in its result instead of refusing the others."""

    messages = fields.List(fields.Dict(), required=True, validate=validate.Length(1, MAX_BATCH))


class BatchCreateDocSchema(Schema):
    """`POST /v1/messages/batch` as documented: each item is a `MessageCreate`."""

    messages = fields.List(
        fields.Nested(MessageCreateSchema), required=True, validate=validate.Length(1, MAX_BATCH)
    )


class BatchItemSchema(Schema):
    """One item's result: accepted (or scheduled) with its id, or rejected with why."""

    index = fields.Integer()
    id = fields.String()
    status = fields.String()
    created_at = fields.DateTime()
    error = fields.Nested(ProblemSchema)


class BatchResultSchema(Schema):
    accepted = fields.Integer()
    rejected = fields.Integer()
    results = fields.List(fields.Nested(BatchItemSchema))


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
    category = fields.String(load_default=None, validate=validate.OneOf(CATEGORIES))
    created_after = fields.AwareDateTime(load_default=None)
    created_before = fields.AwareDateTime(load_default=None)
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
    template = fields.String(allow_none=True)
    category = fields.String()
    priority = fields.String()
    send_at = fields.DateTime(allow_none=True)
    expires_at = fields.DateTime(allow_none=True)
    dedup_key = fields.String(allow_none=True)
    callback_url = fields.String(allow_none=True)
    fallback = fields.List(fields.String(), allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    deliveries = fields.List(fields.Nested(DeliverySchema))
    events = fields.List(fields.Nested(EventSchema))


class TokenRequestSchema(StrictSchema):
    ttl = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))


class TokenSchema(Schema):
    token = fields.String()
    expires_at = fields.DateTime()
