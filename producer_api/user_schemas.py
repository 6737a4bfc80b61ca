"""marshmallow schemas of `/v1/users/{user_id}`: a recipient's addresses, devices and wishes."""

from __future__ import annotations

import re
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from channels.vapid import b64url_decode, public_key_of
from producer_api.fields import PhoneNumber, StrictSchema
from producer_api.vocabulary import CATEGORIES

#: Channels a preference may name: every channel of the contract, installed here or not.
PREFERENCE_CHANNELS = ("web", "email", "sms", "push", "webhook")
PLATFORMS = ("fcm", "apns", "webpush")
MAX_DEVICES = 100
AUTH_SECRET_BYTES = 16  # RFC 8291 section 3.2
_CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
MAX_LOCALE = 35  # the column's size (BCP 47 tags in practice are far shorter)


class FullMatch(validate.Regexp):
    """`validate.Regexp` that matches the whole value: Python's `$` also matches before a final
    newline, so `"fr\\n"` would pass `^...$`. The OpenAPI document still shows the pattern."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


@cache
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def known_timezone(name: str) -> None:
    if name not in _timezones():
        raise ValidationError("Must be an IANA time zone such as Europe/Paris.")


def browser_public_key(value: str) -> None:
    """`keys.p256dh`: the browser's P-256 public key, an uncompressed point in base64url."""
    try:
        public_key_of(b64url_decode(value))
    except ValueError:
        raise ValidationError(
            "Must be the subscription's P-256 public key (65 bytes) in base64url."
        ) from None


def auth_secret(value: str) -> None:
    """`keys.auth`: the subscription's 16-byte authentication secret in base64url."""
    try:
        secret = b64url_decode(value)
    except ValueError:
        secret = b""
    if len(secret) != AUTH_SECRET_BYTES:
        raise ValidationError("Must be the subscription's 16-byte auth secret in base64url.")


class WebPushKeysSchema(StrictSchema):
    p256dh = fields.String(
        required=True, validate=[validate.Length(min=1, max=200), browser_public_key]
    )
    auth = fields.String(required=True, validate=[validate.Length(min=1, max=100), auth_secret])


class WebPushSubscriptionSchema(StrictSchema):
    """A browser's PushSubscription as `JSON.stringify` gives it."""

    endpoint = fields.Url(required=True, schemes={"https"}, validate=validate.Length(max=2000))
    keys = fields.Nested(WebPushKeysSchema, required=True)
    expirationTime = fields.Integer(allow_none=True, load_default=None)


class DeviceSchema(StrictSchema):
    platform = fields.String(required=True, validate=validate.OneOf(PLATFORMS))
    token = fields.String(load_default=None, validate=validate.Length(min=1, max=4096))
    subscription = fields.Nested(WebPushSubscriptionSchema, load_default=None)

    @validates_schema
    def target_fits_platform(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if data.get("platform") == "webpush":
            if data.get("subscription") is None:
                raise ValidationError("A webpush device needs a subscription.", "subscription")
            if data.get("token") is not None:
                raise ValidationError("A webpush device has a subscription, not a token.", "token")
        elif data.get("platform") in PLATFORMS:
            if data.get("token") is None:
                raise ValidationError(f"A {data['platform']} device needs a token.", "token")
            if data.get("subscription") is not None:
                raise ValidationError("Only webpush devices have a subscription.", "subscription")


class QuietHoursSchema(StrictSchema):
    """Local times (in the user's time zone) between which nothing non-urgent is sent."""

    start = fields.String(required=True, validate=FullMatch(_CLOCK, error="Use HH:MM."))
    end = fields.String(required=True, validate=FullMatch(_CLOCK, error="Use HH:MM."))


class UserBodySchema(StrictSchema):
    """The body of `PUT /v1/users/{user_id}`: the whole recipient (fields left out are cleared)."""

    email = fields.Email(load_default=None, allow_none=True, validate=validate.Length(max=320))
    phone = PhoneNumber(load_default=None, allow_none=True)
    timezone = fields.String(load_default=None, allow_none=True, validate=known_timezone)
    locale = fields.String(
        load_default=None,
        allow_none=True,
        validate=[
            validate.Length(max=MAX_LOCALE),
            FullMatch(_LOCALE, error="Must be a language tag such as fr-FR."),
        ],
    )
    devices = fields.List(
        fields.Nested(DeviceSchema), load_default=list, validate=validate.Length(max=MAX_DEVICES)
    )
    preferences = fields.Dict(
        keys=fields.String(validate=validate.OneOf(CATEGORIES)),
        values=fields.Dict(
            keys=fields.String(validate=validate.OneOf(PREFERENCE_CHANNELS)),
            values=fields.Boolean(truthy={True}, falsy={False}),
        ),
        load_default=dict,
    )
    quiet_hours = fields.Nested(QuietHoursSchema, load_default=None, allow_none=True)


class UserSchema(Schema):
    """A recipient as the API shows it."""

    user_id = fields.String()
    email = fields.String(allow_none=True)
    phone = fields.String(allow_none=True)
    timezone = fields.String(allow_none=True)
    locale = fields.String(allow_none=True)
    devices = fields.List(fields.Dict())
    preferences = fields.Dict()
    quiet_hours = fields.Dict(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
