"""The OpenAPI document's error responses, security and operational endpoints, in one place.

Views declare their successes (and the odd specific error, e.g. `alt_response(409, ...)`); the
`ProblemResponses` apispec plugin then completes every operation as the spec is built, so each
blueprint registered on the `Api` (now or later) documents the errors the API really returns:

- every `/v1` operation: 401 (bearer API key), 429 (rate limit, with `Retry-After`) and 503
  (the store cannot be reached, with `Retry-After`);
- a request body: 400 (not JSON), 413 (over `MAX_BODY_BYTES`, or the view's own limit) and
  422 (invalid);
- query parameters: 422;
- a path parameter: 404 (no such resource, or a URL naming nothing).

Every error is `application/problem+json` with the `Problem` schema (see shared/problems.py).
"""

from __future__ import annotations

import http
from typing import Any

from apispec import APISpec, BasePlugin

from shared.openapi import PROBLEM_JSON, ProblemSchema, problem_response

SECURITY_SCHEME = "apiKey"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


#: The error responses of the document, by status code: (component name, description, headers).
ERRORS: dict[int, tuple[str, str, dict[str, Any]]] = {
    400: ("BadRequest", "The body is not JSON.", {}),
    401: (
        "Unauthorized",
        "Missing or unknown API key: send `Authorization: Bearer <api_key>`.",
        {
            "WWW-Authenticate": {
                "description": "Always `Bearer`.",
                "required": True,
                "schema": {"type": "string"},
            }
        },
    ),
    404: ("NotFound", "Nothing of that id for this app.", {}),
    409: ("Conflict", "The resource is not in a state that allows this.", {}),
    413: ("PayloadTooLarge", "The body is over the size limit (256 KiB unless stated).", {}),
    422: ("UnprocessableContent", "The request is not valid; `errors` names each field.", {}),
    429: (
        "TooManyRequests",
        "Over this app's rate limit, or too many bad API keys from this address; retry after "
        "`Retry-After` seconds.",
        {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            }
        },
    ),
    503: (
        "ServiceUnavailable",
        "The store cannot be reached right now; retry after `Retry-After` seconds. `detail` "
        "says whether a write may still have taken effect (a message: under which id).",
        {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            }
        },
    ),
}


class ProblemResponses(BasePlugin):
    """Completes each operation's error responses and security as it is added to the spec."""

    def init_spec(self, spec: APISpec) -> None:
        # Registered through the marshmallow plugin (which precedes this one), so that
        # flask-smorest's own references to `Api.ERROR_SCHEMA` resolve to this component too.
        spec.components.schema("Problem", schema=ProblemSchema)
        for name, description, headers in ERRORS.values():
            spec.components.response(name, problem_response(description, headers), lazy=True)

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not path or not path.startswith("/v1/") or not operations:
            return
        for method, operation in operations.items():
            if method in HTTP_METHODS and isinstance(operation, dict):
                self._complete(path, operation)

    def _complete(self, path: str, operation: dict[str, Any]) -> None:
        operation.setdefault("security", [{SECURITY_SCHEME: []}])
        responses = {str(code): doc for code, doc in operation.get("responses", {}).items()}
        wanted = {401, 429, 503}
        if "requestBody" in operation:
            wanted |= {400, 413, 422}
        if any(
            p.get("in") == "query" for p in operation.get("parameters", ()) if isinstance(p, dict)
        ):
            wanted.add(422)
        if "{" in path:
            wanted.add(404)
        for status in wanted:
            responses.setdefault(str(status), ERRORS[status][0])
        for code, response in responses.items():
            if code.isdigit() and int(code) >= 400:
                responses[code] = _as_problem(int(code), response)
        operation["responses"] = dict(sorted(responses.items()))


def _as_problem(status: int, response: Any) -> Any:
    """The documentation of an error response, as `application/problem+json`."""
    name, description, headers = ERRORS.get(status, ("", _phrase(status), {}))
    if isinstance(response, str):
        # A component name: ours, or flask-smorest's (e.g. "UNPROCESSABLE_ENTITY"), replaced.
        return response if response == name else name or problem_response(description)
    if not isinstance(response, dict) or "$ref" in response:
        return response
    # A view's own, e.g. `alt_response(404, description=...)`: keep its words, add the body.
    documented = problem_response(response.get("description") or description, headers)
    if PROBLEM_JSON in response.get("content", {}):
        documented["content"][PROBLEM_JSON] = response["content"][PROBLEM_JSON]
    if response.get("headers"):
        documented["headers"] = {**documented.get("headers", {}), **response["headers"]}
    return documented


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"
