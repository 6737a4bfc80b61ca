"""marshmallow schemas of `/v1/templates/{code}`: per-channel parts and their previews."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from producer_api.fields import StrictSchema
from shared.templating import PART_FIELDS, compile_errors

TITLE_MAX, URL_MAX, TEXT_MAX, DOCUMENT_MAX = 1000, 2000, 20_000, 100_000


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
