"""RFC 9457 problem details: every error the API returns is `application/problem+json`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, json, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, InternalServerError

from shared.field_errors import flatten_errors
from shared.store_outage import RETRY_AFTER_SECONDS, is_store_outage

PROBLEM_TYPE_BASE = "https://omnipush.dev/problems/"
WEBARGS_LOCATIONS = {"json", "query", "querystring", "form", "headers", "cookies", "files", "path"}


def problem_document(
    status: int,
    title: str,
    detail: str,
    *,
    errors: Mapping[str, list[str]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The body of a problem: alone, or as one item's error inside a larger answer."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    if errors:
        body["errors"] = dict(errors)
    return body


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    errors: Mapping[str, list[str]] | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """A problem+json response."""
    body = problem_document(status, title, detail, errors=errors, **extra)
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _merge_locations(by_location: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for errors in by_location.values():
        if isinstance(errors, Mapping):
            merged.update(errors)
        else:
            merged.setdefault("_body", []).extend(errors if isinstance(errors, list) else [errors])
    return merged


def http_exception_to_problem(error: HTTPException) -> Response:
    """Turn any werkzeug/flask-smorest HTTP error into a problem response."""
    status = error.code or 500
    title = error.name
    detail = error.description or title
    data = getattr(error, "data", None) or {}
    errors = None
    messages = data.get("messages") or data.get("errors")
    if messages:
        if isinstance(messages, Mapping) and set(messages) <= WEBARGS_LOCATIONS:
            # webargs nests field errors under the request location ("json", "query", ...).
            messages = _merge_locations(messages)
        errors = flatten_errors(messages)
        detail = "The request is not valid; see errors."
    if data.get("message"):
        detail = str(data["message"])
    headers = dict(data.get("headers") or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return problem(status, title, detail, errors=errors, headers=headers)


def store_unavailable(detail: str, **extra: Any) -> Response:
    """The 503 of a request caught by a store outage (`shared.store_outage`)."""
    return problem(
        503,
        "Service Unavailable",
        detail,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        **extra,
    )


#: Methods that change nothing, so a failed one has certainly taken no effect.
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def _store_unavailable_now() -> Response:
    if request.method in _SAFE_METHODS:
        return store_unavailable(
            f"The store cannot be reached right now; retry in {RETRY_AFTER_SECONDS} s."
        )
    return store_unavailable(
        "The store could not be reached, so this request may or may not have taken effect. "
        f"Retry in {RETRY_AFTER_SECONDS} s: a request with an Idempotency-Key is safe to retry "
        "with the same key."
    )


def install_problem_handlers(app: Flask) -> None:
    """Make every error, including unexpected ones, a problem+json response."""
    app.register_error_handler(HTTPException, http_exception_to_problem)

    @app.errorhandler(SQLAlchemyError)
    def store_error(error: SQLAlchemyError) -> Response:
        if not is_store_outage(error):
            return unexpected(error)
        # No traceback: the store is away, not the code wrong; the cause alone says why.
        app.logger.warning("store unavailable: %s", _cause(error))
        return _store_unavailable_now()

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        app.logger.exception("unhandled error")
        return http_exception_to_problem(InternalServerError())


def _cause(error: SQLAlchemyError) -> str:
    """The driver's message without the statement and its parameters (which hold content)."""
    original = getattr(error, "orig", None)
    return f"{type(error).__name__}: {original if original is not None else error}".strip()
