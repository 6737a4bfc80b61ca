"""marshmallow schemas of `/v1/templates/{code}`: per-channel parts, their previews, and what
each channel's part must be once rendered."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from producer_api.fields import StrictSchema
from producer_api.schemas import ContentSchema
from shared.templating import MAX_FIELD, PART_FIELDS, compile_errors

TITLE_MAX, URL_MAX, TEXT_MAX, DOCUMENT_MAX = 1000, 2000, 20_000, 100_000
#: The longest rendered email subject (an email header line) and SMS text (10 segments).
SUBJECT_MAX, SMS_MAX = 998, 1600


def _source(max_length: int, *, required: bool = False) -> fields.String:
    """A Jinja2 source of at most `max_length` characters; a required one is not empty."""
    return fields.String(
        required=required, validate=validate.Length(min=1 if required else 0, max=max_length)
    )


class WebPartSchema(StrictSchema):
    title = _source(TITLE_MAX, required=True)
    body = _source(TEXT_MAX)
    url = _source(URL_MAX)


class EmailPartSchema(StrictSchema):
    subject = _source(TITLE_MAX, required=True)
    text = _source(DOCUMENT_MAX)
    html = _source(DOCUMENT_MAX)

    @validates_schema
    def has_a_body(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if not data.get("text") and not data.get("html"):
            raise ValidationError("An email part needs text, html or both.", "text")


class SmsPartSchema(StrictSchema):
    text = _source(TEXT_MAX, required=True)


class PushPartSchema(StrictSchema):
    title = _source(TITLE_MAX, required=True)
    body = _source(TEXT_MAX)


class PartsSchema(StrictSchema):
    """One part per channel (at least one); every field is a Jinja2 template that compiles."""

    web = fields.Nested(WebPartSchema)
    email = fields.Nested(EmailPartSchema)
    sms = fields.Nested(SmsPartSchema)
    push = fields.Nested(PushPartSchema)

    @validates_schema
    def compiles(self, data: dict[str, Any], **_kwargs: Any) -> None:
        nested: dict[str, dict[str, list[str]]] = {}
        for name, messages in compile_errors(data).items():
            channel, field = name.split(".", 1)
            nested.setdefault(channel, {})[field] = messages
        if nested:
            raise ValidationError(nested)


def _some_part(parts: dict[str, Any]) -> None:
    if not parts:
        raise ValidationError(f"Give at least one part of: {', '.join(PART_FIELDS)}.")


class TemplateBodySchema(StrictSchema):
    """The body of `PUT /v1/templates/{code}`: the whole template (a replace, not a patch)."""

    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    parts = fields.Nested(PartsSchema, required=True, validate=_some_part)


class TemplateSchema(Schema):
    """A template as the API shows it."""

    code = fields.String()
    name = fields.String(allow_none=True)
    parts = fields.Dict(keys=fields.String(), values=fields.Dict())
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class PreviewBodySchema(StrictSchema):
    """The body of `POST /v1/templates/{code}/preview`."""

    params = fields.Dict(keys=fields.String(), load_default=dict)
    channels = fields.List(
        fields.String(validate=validate.OneOf(PART_FIELDS)),
        load_default=None,
        validate=validate.Length(min=1),
    )


class PreviewSchema(Schema):
    """The parts rendered with the given params, as they would be sent."""

    parts = fields.Dict(keys=fields.String(), values=fields.Dict())


class RenderedEmailSchema(StrictSchema):
    """An email part as rendered."""

    subject = fields.String(validate=validate.Length(max=SUBJECT_MAX))
    text = fields.String(validate=validate.Length(max=MAX_FIELD))
    html = fields.String(validate=validate.Length(max=MAX_FIELD))


class RenderedSmsSchema(StrictSchema):
    """An SMS part as rendered."""

    text = fields.String(validate=validate.Length(max=SMS_MAX))


#: What each channel's part must pass once rendered: a web or push part, what a message's
#: literal `content` must (title, body and an http or https url, an empty url being none).
RENDERED_SCHEMAS: dict[str, Schema] = {
    "web": ContentSchema(),
    "push": ContentSchema(),
    "email": RenderedEmailSchema(),
    "sms": RenderedSmsSchema(),
}
