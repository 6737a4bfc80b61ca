"""The operator's configuration file (`OMNIPUSH_CONFIG`, TOML): channel providers and defaults.

Everything in it is optional, and a missing default file (`omnipush.toml` in the working
directory) is an empty configuration. A file that does not parse, or holds a key that is
unknown or of the wrong kind, is refused at start-up with one line naming the key
(`omnipush.toml: sms.accounts.0.provider: Must be one of: twilio, aliyun, http.`).

Provider URLs set here (`base_url`, `url`) are the operator's and are trusted as given; URLs
that an app supplies go through `shared.outbound` instead. Durations are `"500ms"`, `"5s"`,
`"2m"`, `"1h"` or `"1d"`.
"""

from __future__ import annotations

import ipaddress
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from shared.field_errors import flatten_errors
from shared.policy import (
    DAY_SECONDS,
    MAX_CAP_LIMIT,
    MAX_CAP_WINDOW,
    MAX_DEDUP_WINDOW,
    REDIS_STAGES,
    Policy,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SMS_PROVIDERS = ("twilio", "aliyun", "http")
DEFAULT_RETRY_LABELS = ("5s", "30s", "2m", "10m", "1h")
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(RuntimeError):
    """The configuration file cannot be used; the message is one line naming the key."""


def seconds_of(duration: str) -> float:
    """`"30s"` -> 30.0; ValueError for anything else."""
    match = _DURATION.fullmatch(duration.strip())
    if match is None:
        raise ValueError(f"{duration!r} is not a duration such as 5s, 2m or 1h")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class Delay:
    """One retry delay tier: its label (also its queue's name) and its length."""

    label: str
    seconds: float


#: `[retry] delays` when the file sets none; the last is the final attempt.
DEFAULT_RETRY_DELAYS = tuple(Delay(label, seconds_of(label)) for label in DEFAULT_RETRY_LABELS)


@dataclass(frozen=True)
class Account:
    """One provider account of a channel: the unit of rate limits, slow-downs and breakers.

    `options` holds the provider's own keys (credentials, `base_url` or `url`, `from`, ...).
    """

    name: str
    provider: str
    weight: int = 1
    rate: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EmailConfig:
    """`[email]`: the SMTP server, the sender, and `list_unsubscribe`, the URL template of the
    `List-Unsubscribe` header of marketing mail (`{app_id}`, `{user_id}`, `{address}`,
    `{message_id}`, `{delivery_id}`, each URL-quoted); `ca_file` trusts a private CA."""

    smtp_url: str | None = None
    sender: str = "omnipush@localhost"
    rate: float | None = None
    list_unsubscribe: str | None = None
    ca_file: str | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class WebPushConfig:
    vapid_private_key: str | None = None
    vapid_subject: str | None = None
    rate: float | None = None
    # How long a push service may take to answer one request.
    timeout: float = 10.0


@dataclass(frozen=True)
class FcmConfig:
    service_account_file: str | None = None
    base_url: str = "https://fcm.googleapis.com"
    rate: float | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class ApnsConfig:
    key_file: str | None = None
    key_id: str | None = None
    team_id: str | None = None
    topic: str | None = None
    base_url: str = "https://api.push.apple.com"
    rate: float | None = None
    timeout: float = 10.0
    # A CA bundle to check the server's certificate against instead of the system's.
    ca_file: str | None = None


@dataclass(frozen=True)
class BreakerConfig:
    """A provider account that fails `failures` times in a row is skipped for `open_seconds`."""

    failures: int = 5
    open_seconds: float = 30.0


@dataclass(frozen=True)
class FileConfig:
    """What `OMNIPUSH_CONFIG` holds, with the defaults for everything it leaves out."""

    email: EmailConfig = field(default_factory=EmailConfig)
    sms_accounts: tuple[Account, ...] = ()
    webpush: WebPushConfig = field(default_factory=WebPushConfig)
    fcm: FcmConfig = field(default_factory=FcmConfig)
    apns: ApnsConfig = field(default_factory=ApnsConfig)
    # The file's part only: `Settings.outbound_allow` joins OMNIPUSH_OUTBOUND_ALLOW to it.
    outbound_allow: tuple[IPNetwork, ...] = ()
    retry_delays: tuple[Delay, ...] = DEFAULT_RETRY_DELAYS
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    # The defaults of the dispatcher's policy stages, under each app's own (`shared.policy`).
    policy: Policy = field(default_factory=Policy)


def _duration(value: str) -> None:
    try:
        seconds_of(value)
    except ValueError as error:
        raise ValidationError(str(error)) from None


def _cidr(value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValidationError(f"{value!r} is not a CIDR such as 10.0.0.0/8") from None


def _duration_within(least: float, most: float) -> Any:
    """A validator of a duration from `least` to `most` seconds (after `_duration`)."""

    def check(value: str) -> None:
        _duration(value)
        if not least <= seconds_of(value) <= most:
            raise ValidationError(f"Must be from {least:g}s to {most / DAY_SECONDS:g}d.")

    return check


_URL = validate.URL(schemes={"http", "https"}, require_tld=False)
_RATE = fields.Float(validate=validate.Range(min=0, min_inclusive=False))


class _Section(Schema):
    class Meta:
        unknown = RAISE


#: What a `[email] list_unsubscribe` template may name.
UNSUBSCRIBE_FIELDS = ("app_id", "user_id", "address", "message_id", "delivery_id")


def _unsubscribe_template(value: str) -> None:
    if not value.startswith(("https://", "mailto:")):
        raise ValidationError("Use an https:// or mailto: URL.")
    try:
        named = {
            name
            for _text, name, _spec, _conv in string.Formatter().parse(value)
            if name is not None
        }
    except ValueError as error:
        raise ValidationError(f"Not a URL template: {error}.") from None
    unknown = sorted(named - set(UNSUBSCRIBE_FIELDS))
    if unknown:
        raise ValidationError(
            f"Unknown field {{{unknown[0]}}}; use {', '.join(UNSUBSCRIBE_FIELDS)}."
        )


class _EmailSchema(_Section):
    smtp_url = fields.String(
        validate=validate.Regexp(r"^smtps?://", error="Use smtp:// or smtps://.")
    )
    from_ = fields.String(data_key="from", validate=validate.Length(min=3))
    rate = _RATE
    list_unsubscribe = fields.String(validate=_unsubscribe_template)
    ca_file = fields.String(validate=validate.Length(min=1))
    timeout = fields.String(validate=_duration)


class _SmsAccountSchema(_Section):
    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    provider = fields.String(required=True, validate=validate.OneOf(SMS_PROVIDERS))
    weight = fields.Integer(strict=True, validate=validate.Range(min=1))
    rate = _RATE
    # twilio
    account_sid = fields.String()
    auth_token = fields.String()
    # aliyun
    access_key_id = fields.String()
    access_key_secret = fields.String()
    sign_name = fields.String()
    template_code = fields.String()
    region = fields.String()
    # twilio and aliyun
    from_ = fields.String(data_key="from")
    base_url = fields.String(validate=_URL)
    # http
    url = fields.String(validate=_URL)
    token = fields.String()
    # every provider: connect, send and the wait for the answer, each
    timeout = fields.String(validate=_duration)


#: The keys each SMS provider cannot do without.
_SMS_REQUIRED: Mapping[str, tuple[str, ...]] = {
    "twilio": ("account_sid", "auth_token", "from_"),
    "aliyun": ("access_key_id", "access_key_secret", "sign_name", "template_code"),
    "http": ("url", "token"),
}


class _SmsSchema(_Section):
    accounts = fields.List(fields.Nested(_SmsAccountSchema), validate=validate.Length(min=1))


class _WebPushSchema(_Section):
    vapid_private_key = fields.String(validate=validate.Length(min=20))
    vapid_subject = fields.String(
        validate=validate.Regexp(r"^(mailto:|https://)", error="Use mailto: or https://.")
    )
    rate = _RATE
    timeout = fields.String(validate=_duration)


class _FcmSchema(_Section):
    service_account_file = fields.String(validate=validate.Length(min=1))
    base_url = fields.String(validate=_URL)
    rate = _RATE
    timeout = fields.String(validate=_duration)


class _ApnsSchema(_Section):
    key_file = fields.String(validate=validate.Length(min=1))
    key_id = fields.String(validate=validate.Length(min=1))
    team_id = fields.String(validate=validate.Length(min=1))
    topic = fields.String(validate=validate.Length(min=1))
    base_url = fields.String(validate=_URL)
    rate = _RATE
    timeout = fields.String(validate=_duration)
    ca_file = fields.String(validate=validate.Length(min=1))


class _OutboundSchema(_Section):
    allow = fields.List(fields.String(validate=_cidr))


class _RetrySchema(_Section):
    delays = fields.List(fields.String(validate=_duration), validate=validate.Length(min=1, max=20))


class _BreakerSchema(_Section):
    failures = fields.Integer(strict=True, validate=validate.Range(min=1))
    open_for = fields.String(validate=_duration)


def _dedup_window() -> fields.String:
    return fields.String(validate=_duration_within(0, MAX_DEDUP_WINDOW))


class _DedupSchema(_Section):
    notification = _dedup_window()
    marketing = _dedup_window()
    verification = _dedup_window()


class _CapSchema(_Section):
    limit = fields.Integer(
        required=True, strict=True, validate=validate.Range(min=0, max=MAX_CAP_LIMIT)
    )
    window = fields.String(validate=_duration_within(1, MAX_CAP_WINDOW))

    @validates_schema
    def window_of_a_limit(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if data.get("limit") and "window" not in data:
            raise ValidationError("Required with a limit other than 0.", "window")


class _CapsSchema(_Section):
    notification = fields.Nested(_CapSchema)
    marketing = fields.Nested(_CapSchema)
    verification = fields.Nested(_CapSchema)


class _PolicySchema(_Section):
    fail_open = fields.List(fields.String(validate=validate.OneOf(REDIS_STAGES)))
    dedup_window = fields.Nested(_DedupSchema)
    frequency_cap = fields.Nested(_CapsSchema)


class _FileSchema(_Section):
    email = fields.Nested(_EmailSchema)
    sms = fields.Nested(_SmsSchema)
    webpush = fields.Nested(_WebPushSchema)
    fcm = fields.Nested(_FcmSchema)
    apns = fields.Nested(_ApnsSchema)
    outbound = fields.Nested(_OutboundSchema)
    retry = fields.Nested(_RetrySchema)
    breaker = fields.Nested(_BreakerSchema)
    policy = fields.Nested(_PolicySchema)


def load_config(path: str | Path, required: bool = False) -> FileConfig:
    """The configuration in `path`; an empty one when the file is missing and not `required`."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{source}: no such file (named by OMNIPUSH_CONFIG)") from None
        return FileConfig()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source}: cannot be read: {error}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    return parse_config(raw, str(source))


def parse_config(raw: Mapping[str, Any], source: str = "configuration") -> FileConfig:
    """A parsed TOML document as a `FileConfig`; `ConfigError` names the first bad key."""
    try:
        data = _FileSchema().load(raw)
    except ValidationError as error:
        raise ConfigError(_one_line(source, error.messages)) from None
    accounts = data.get("sms", {}).get("accounts", [])
    names = [account["name"] for account in accounts]
    for index, account in enumerate(accounts):
        for key in _SMS_REQUIRED[account["provider"]]:
            if key not in account:
                shown = key.rstrip("_")
                raise ConfigError(
                    f"{source}: sms.accounts.{index}.{shown}: "
                    f"required by provider {account['provider']!r}"
                )
        if account["name"] in names[:index]:
            raise ConfigError(f"{source}: sms.accounts.{index}.name: {account['name']!r} twice")
    email = data.get("email", {})
    breaker = data.get("breaker", {})
    delays = data.get("retry", {}).get("delays", DEFAULT_RETRY_LABELS)
    return FileConfig(
        email=EmailConfig(
            smtp_url=email.get("smtp_url"),
            sender=email.get("from_", EmailConfig.sender),
            rate=email.get("rate"),
            list_unsubscribe=email.get("list_unsubscribe"),
            ca_file=email.get("ca_file"),
            timeout=seconds_of(email["timeout"]) if "timeout" in email else EmailConfig.timeout,
        ),
        sms_accounts=tuple(_account(a) for a in accounts),
        webpush=WebPushConfig(**_with_seconds(data.get("webpush", {}), "timeout")),
        fcm=FcmConfig(**_with_seconds(data.get("fcm", {}), "timeout")),
        apns=ApnsConfig(**_with_seconds(data.get("apns", {}), "timeout")),
        outbound_allow=tuple(
            ipaddress.ip_network(cidr, strict=False)
            for cidr in data.get("outbound", {}).get("allow", [])
        ),
        retry_delays=tuple(Delay(d, seconds_of(d)) for d in dict.fromkeys(delays)),
        breaker=BreakerConfig(
            failures=breaker.get("failures", BreakerConfig.failures),
            open_seconds=seconds_of(breaker["open_for"])
            if "open_for" in breaker
            else BreakerConfig.open_seconds,
        ),
        policy=Policy().with_document(_policy_document(data.get("policy", {}))),
    )


def _policy_document(section: Mapping[str, Any]) -> dict[str, Any]:
    """`[policy]` as a `shared.policy` document: durations in seconds, a limit of 0 as no cap."""
    document: dict[str, Any] = {
        "dedup_window": {
            category: seconds_of(duration)
            for category, duration in section.get("dedup_window", {}).items()
        },
        "frequency_cap": {
            category: {"limit": cap["limit"], "window": seconds_of(cap["window"])}
            if cap["limit"]
            else None
            for category, cap in section.get("frequency_cap", {}).items()
        },
    }
    if "fail_open" in section:
        document["fail_open"] = section["fail_open"]
    return document


def _with_seconds(section: Mapping[str, Any], key: str) -> dict[str, Any]:
    """`section` with its duration `key` (when set) in seconds."""
    converted = dict(section)
    if key in converted:
        converted[key] = seconds_of(converted[key])
    return converted


def _account(loaded: Mapping[str, Any]) -> Account:
    options = {
        key.rstrip("_"): value
        for key, value in loaded.items()
        if key not in ("name", "provider", "weight", "rate")
    }
    return Account(
        name=loaded["name"],
        provider=loaded["provider"],
        weight=loaded.get("weight", 1),
        rate=loaded.get("rate"),
        options=options,
    )


def _one_line(source: str, messages: Any) -> str:
    key, problems = next(iter(flatten_errors(messages).items()))
    return f"{source}: {key}: {problems[0]}"
