"""marshmallow schemas of `/v1/endpoints/{name}`: an app's webhooks and chat robots."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from producer_api.fields import StrictSchema
from shared.endpoint_kinds import KINDS, WEBHOOK
from shared.standard_webhooks import secret_key

MAX_URL, MAX_SECRET = 2000, 500


class EndpointBodySchema(StrictSchema):
    """The body of `PUT /v1/endpoints/{name}` (a replace). A webhook's `secret` is a Standard
    Webhooks one (`whsec_` and base64); without one, the endpoint keeps its current secret or
    gets a new one. A robot's is its signing secret, if the robot has signing on."""

    kind = fields.String(required=True, validate=validate.OneOf(KINDS))
    url = fields.Url(
        required=True,
        schemes={"http", "https"},
        validate=validate.Length(max=MAX_URL),
        metadata={"format": "uri"},
    )
    secret = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(min=1, max=MAX_SECRET)
    )

    @validates_schema
    def webhook_secret(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if data.get("kind") == WEBHOOK and data.get("secret") is not None:
            try:
                secret_key(data["secret"])
            except ValueError as error:
                raise ValidationError(str(error), "secret") from None


class EndpointSchema(Schema):
    """An endpoint as the API shows it. `secret` is in the answer to PUT only: it is what the
    receiver verifies with, shown when it is set (or generated), never read back after."""

    name = fields.String()
    kind = fields.String()
    url = fields.String()
    secret = fields.String(
        metadata={"description": "Only in the answer to PUT: the secret now in force."}
    )
    has_secret = fields.Boolean()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class EndpointPageSchema(Schema):
    items = fields.List(fields.Nested(EndpointSchema))
    next_cursor = fields.String(allow_none=True)
