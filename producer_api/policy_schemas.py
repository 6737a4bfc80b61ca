"""marshmallow schemas of `/v1/policy`: an app's own settings of the dispatcher's policy stages
(the body of PUT), and the policy its messages are dispatched under (the answer)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, pre_load, validate

from producer_api.fields import StrictSchema
from producer_api.templates import CODE_RULE
from shared.policy import MAX_CAP_LIMIT, MAX_CAP_WINDOW, MAX_DEDUP_WINDOW
from shared.templating import TEMPLATE_CODE

MAX_DISCARDED_TEMPLATES = 200
FAIL_OPEN_RULE = (
    "fail_open is the operator's ([policy] in omnipush.toml): what the dispatcher does while "
    "Redis is down is not an app's to set."
)


def _template_code(code: str) -> None:
    # fullmatch: the pattern's `$` alone would let a trailing newline through.
    if TEMPLATE_CODE.fullmatch(code) is None:
        raise ValidationError(CODE_RULE)


def _dedup_window() -> fields.Float:
    return fields.Float(
        validate=validate.Range(min=0, max=MAX_DEDUP_WINDOW),
        metadata={"description": "Seconds; 0 turns content dedup off for the category."},
    )


class DedupWindowSchema(StrictSchema):
    """Per category: the seconds within which the same content (or `dedup_key`) to the same
    recipient on the same channel is `deduplicated`."""

    notification = _dedup_window()
    marketing = _dedup_window()
    verification = _dedup_window()


class CapSchema(StrictSchema):
    """At most `limit` deliveries per recipient, channel and category in any `window` seconds;
    those over it are `throttled`."""

    limit = fields.Integer(
        required=True, strict=True, validate=validate.Range(min=1, max=MAX_CAP_LIMIT)
    )
    window = fields.Float(
        required=True,
        validate=validate.Range(min=1, max=MAX_CAP_WINDOW),
        metadata={"description": "Seconds."},
    )


def _cap() -> fields.Nested:
    return fields.Nested(
        CapSchema, allow_none=True, metadata={"description": "null: no cap on the category."}
    )


class FrequencyCapSchema(StrictSchema):
    """Per category: its cap, or null for none."""

    notification = _cap()
    marketing = _cap()
    verification = _cap()


class DiscardSchema(StrictSchema):
    """Messages that are `canceled` at dispatch instead of sent: all of the app's, or those of
    the templates listed."""

    all = fields.Boolean(load_default=False)
    templates = fields.List(
        fields.String(validate=_template_code, metadata={"pattern": TEMPLATE_CODE.pattern}),
        load_default=list,
        validate=validate.Length(max=MAX_DISCARDED_TEMPLATES),
        metadata={"description": "Template codes (they need not exist yet)."},
    )


class PolicyBodySchema(StrictSchema):
    """The body of `PUT /v1/policy`: the app's overrides as a whole. What it leaves out (a
    category of `dedup_window` or `frequency_cap`, or `discard`) is the operator's default."""

    dedup_window = fields.Nested(DedupWindowSchema)
    frequency_cap = fields.Nested(FrequencyCapSchema)
    discard = fields.Nested(DiscardSchema)

    @pre_load
    def refuse_fail_open(self, data: Any, **_kwargs: Any) -> Any:
        # Named as such rather than as an unknown field: it is a key of the policy document,
        # only not the app's.
        if isinstance(data, dict) and "fail_open" in data:
            raise ValidationError(FAIL_OPEN_RULE, "fail_open")
        return data


class PolicySchema(Schema):
    """The policy the app's messages are dispatched under: the operator's defaults with the
    app's own `overrides` over them."""

    dedup_window = fields.Nested(DedupWindowSchema)
    frequency_cap = fields.Nested(FrequencyCapSchema)
    discard = fields.Nested(DiscardSchema)
    fail_open = fields.List(
        fields.String(),
        metadata={
            "description": "The operator's: the Redis stages (`dedup`, `frequency_cap`) that "
            "let a delivery through unchecked while Redis is unreachable."
        },
    )
    overrides = fields.Nested(
        PolicyBodySchema, metadata={"description": "What the app itself set ({} if nothing)."}
    )
    updated_at = fields.DateTime(
        allow_none=True, metadata={"description": "When the app last set it; null if never."}
    )
