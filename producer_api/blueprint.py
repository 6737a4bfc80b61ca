"""The flask-smorest blueprint class every API resource uses.

Its argument parser reads the body as JSON whatever the declared content type, so that
`curl -d '{...}'` (sent as form-encoded) works as users expect; a body that is not JSON is a 400.
"""

from __future__ import annotations

from typing import Any, NoReturn

import flask_smorest
from webargs import core
from webargs.flaskparser import FlaskParser


class JsonBodyParser(FlaskParser):
    """A webargs parser that does not insist on `Content-Type: application/json`, and that lets
    each schema's own `unknown = RAISE` reject unknown fields in every location."""

    DEFAULT_UNKNOWN_BY_LOCATION: dict[str, str | None] = {}  # noqa: RUF012 - webargs reads it

    def _raw_load_json(self, req: Any) -> Any:
        data = req.get_data(cache=True)
        if not data:
            return core.missing
        return core.parse_json(data)


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's blueprint with the lenient JSON parser."""

    ARGUMENTS_PARSER = JsonBodyParser()


def fail(status: int, message: str, **data: Any) -> NoReturn:
    """Abort the request with a problem+json error (`errors=` names fields)."""
    flask_smorest.abort(status, message=message, **data)
    raise AssertionError("flask_smorest.abort returned")
