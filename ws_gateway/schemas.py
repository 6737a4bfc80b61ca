"""marshmallow schemas of what browsers send (socket `ack`/`read`/`renew` bodies, inbox REST
input) and of what the inbox REST answers."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ws_gateway.auth import MAX_TOKEN_LENGTH
from ws_gateway.inbox import MAX_IDS, MAX_PAGE

#: Delivery ids are `dlv_` plus 26 characters; the column holds at most 40.
_delivery_id = fields.String(validate=validate.Length(min=1, max=40))


class StrictSchema(Schema):
    """Rejects unknown fields, as the contract requires."""

    class Meta:
        unknown = RAISE


class AckSchema(StrictSchema):
    """Socket `ack`: `{"ids": [...]}`, up to 1000 delivery ids."""

    ids = fields.List(_delivery_id, required=True, validate=validate.Length(max=MAX_IDS))


class ReadSchema(StrictSchema):
    """Socket `read` and `POST /v1/inbox/read`: `{"ids": [...]}` or `{"all": true}`."""

    ids = fields.List(_delivery_id, validate=validate.Length(max=MAX_IDS))
    all = fields.Boolean()

    @validates_schema
    def ids_or_all(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if "ids" in data and data.get("all"):
            raise ValidationError("Send either ids or all, not both.", field_name="_body")
        if "ids" not in data and data.get("all") is not True:
            raise ValidationError('Send "ids": [...] or "all": true.', field_name="_body")


class RenewSchema(StrictSchema):
    """Socket `renew`: `{"token": JWT}`, a fresh browser token for the same user."""

    token = fields.String(required=True, validate=validate.Length(min=1, max=MAX_TOKEN_LENGTH))


class InboxQuerySchema(StrictSchema):
    """`GET /v1/inbox` query: `unread`, `limit` (1 to 200) and the `before` cursor."""

    unread = fields.Boolean(load_default=False)
    limit = fields.Integer(load_default=None, validate=validate.Range(min=1, max=MAX_PAGE))
    before = fields.String(load_default=None, validate=validate.Length(min=1, max=40))


class NotificationSchema(Schema):
    """A notification as the inbox listing and the socket's `notification` event carry it (the
    event adds `position`, its place in the live feed)."""

    id = fields.String(required=True, metadata={"description": "The delivery id."})
    message_id = fields.String(required=True)
    title = fields.String(required=True)
    body = fields.String(required=True)
    url = fields.String(required=True, allow_none=True)
    data = fields.Dict(required=True)
    category = fields.String(required=True)
    created_at = fields.String(required=True, metadata={"format": "date-time"})


class InboxItemSchema(NotificationSchema):
    """One item of `GET /v1/inbox`: the notification and where the user is with it."""

    status = fields.String(required=True, metadata={"description": "The delivery's status."})
    read = fields.Boolean(required=True)
    delivered_at = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    read_at = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})


class InboxPageSchema(Schema):
    """A page of the inbox, newest first; `next_before` continues it (null at the end)."""

    items = fields.List(fields.Nested(InboxItemSchema), required=True)
    next_before = fields.String(required=True, allow_none=True)


class UnreadCountSchema(Schema):
    """`GET /v1/inbox/unread-count`."""

    count = fields.Integer(required=True)


class ReadResultSchema(Schema):
    """`POST /v1/inbox/read`: how many were marked read, and how many stay unread."""

    updated = fields.Integer(required=True)
    unread_count = fields.Integer(required=True)
