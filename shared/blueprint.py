"""The flask-smorest blueprint class every REST resource uses, in the API and the gateway alike.

Its argument parser reads the body as JSON whatever the declared content type, so that
`curl -d '{...}'` (sent as form-encoded) works as users expect; a body that is not JSON is a 400.
It also refuses, as a 422 naming the field, any value the store cannot keep whatever the schema
says: strings with NUL characters or lone surrogates (PostgreSQL text and JSON reject both) and
numbers too large to be finite.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any, NoReturn

import flask_smorest
from flask import request
from marshmallow import ValidationError
from webargs import core
from webargs.flaskparser import FlaskParser

from shared import json_body

UNSTORABLE_TEXT = "Must not contain NUL characters or unpaired surrogates."
UNSTORABLE_NUMBER = "Must be a finite number."


def storable_text(text: str) -> bool:
    """Whether PostgreSQL can store `text` (as text or inside JSON)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unstorable(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(dotted field path, message) for each value in parsed JSON that cannot be stored."""
    where = path or "_body"
    if isinstance(value, str):
        if not storable_text(value):
            yield where, UNSTORABLE_TEXT
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield where, UNSTORABLE_NUMBER
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if not storable_text(str(key)):
                yield (f"{path}._keys" if path else "_keys"), UNSTORABLE_TEXT
                continue
            yield from unstorable(item, name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unstorable(item, f"{path}.{index}" if path else str(index))


# What a JSON document must contain for it to parse into something `unstorable` finds: a NUL or
# surrogate escape (raw ones do not parse), a non-finite literal, or a number too large for a
# float. Most bodies contain none of these, and spare the walk.
_MAYBE_UNSTORABLE = re.compile(
    rb"\\u(?:0000|[dD][89a-fA-F])|Infinity|NaN|[0-9][eE][+-]?[0-9]{3}|[0-9]{300}"
)


def may_hold_unstorable(raw: bytes) -> bool:
    """Whether the JSON document `raw` could hold a value that `unstorable` reports."""
    return _MAYBE_UNSTORABLE.search(raw) is not None


def _refuse_unstorable(found: Iterator[tuple[str, str]]) -> None:
    errors: dict[str, list[str]] = {}
    for where, message in found:
        errors.setdefault(where, []).append(message)
    if errors:
        raise ValidationError(errors)


class JsonBodyParser(FlaskParser):
    """A webargs parser that does not insist on `Content-Type: application/json`, and that lets
    each schema's own `unknown = RAISE` reject unknown fields in every location."""

    DEFAULT_UNKNOWN_BY_LOCATION: dict[str, str | None] = {}  # noqa: RUF012 - webargs reads it

    def _raw_load_json(self, req: Any) -> Any:
        data = req.get_data(cache=True)
        if not data:
            return core.missing
        try:
            return json_body.loads(data)
        except json_body.UnreadableJson as error:
            fail(400, str(error), errors={"_body": [str(error)]})

    def load_json(self, req: Any, schema: Any) -> Any:
        data = super().load_json(req, schema)
        if may_hold_unstorable(req.get_data(cache=True)):
            _refuse_unstorable(unstorable(data))
        return data

    def load_querystring(self, req: Any, schema: Any) -> Any:
        _refuse_unstorable(
            (name, UNSTORABLE_TEXT)
            for name, value in req.args.items(multi=True)
            if not storable_text(name) or not storable_text(value)
        )
        return super().load_querystring(req, schema)


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's blueprint with the lenient JSON parser; a path id that could not be
    stored names nothing (404)."""

    ARGUMENTS_PARSER = JsonBodyParser()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A blueprint's before_request runs after the app's, so authentication comes first.
        self.before_request(_refuse_unstorable_path)


def _refuse_unstorable_path() -> None:
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str) and not storable_text(value):
            fail(404, f"No such {name}: it contains NUL characters or unpaired surrogates.")


def fail(status: int, message: str, **data: Any) -> NoReturn:
    """Abort the request with a problem+json error (`errors=` names fields)."""
    flask_smorest.abort(status, message=message, **data)
    raise AssertionError("flask_smorest.abort returned")
