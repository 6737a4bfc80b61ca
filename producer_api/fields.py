"""marshmallow building blocks shared by the REST schemas: strict schemas and address fields."""

from __future__ import annotations

from typing import Any

import phonenumbers
from marshmallow import RAISE, Schema, ValidationError, fields


class StrictSchema(Schema):
    """Rejects unknown fields, as the contract requires."""

    class Meta:
        unknown = RAISE


class PhoneNumber(fields.String):
    """A phone number in international form, stored as E.164 (`+33612345678`)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            number = phonenumbers.parse(text, None)
        except phonenumbers.NumberParseException as error:
            raise ValidationError(
                "Must be an international number such as +33612345678."
            ) from error
        if not phonenumbers.is_valid_number(number):
            raise ValidationError("Not a valid phone number.")
        formatted: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        return formatted
