"""The common single message, accepted without the Flask machinery around it.

Most calls to `POST /v1/messages` carry a plain message (users, installed channels, plain
content; no topic or template to look up, no idempotency key). For those, the request parsing,
routing, argument and response layers cost several times what storing the message does. This
WSGI middleware sits in front of the Flask app and accepts exactly such a message itself, with
the same pieces the Flask view uses: the API-key gate, the schema's quick check, the intake; and
it stores concurrent requests' messages together (`producer_api.group_commit`).
Anything else, and anything it is unsure of (a body it cannot read, an error of any kind before
the message is stored), goes to the Flask app unchanged, which then answers as it always does:
the API behaves the same either way; the tests run through this middleware.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from werkzeug.exceptions import HTTPException, InternalServerError

from channels.registry import channel_names
from producer_api import intake
from producer_api.auth import ApiKeyGate
from producer_api.blueprint import may_hold_unstorable, unstorable
from producer_api.group_commit import GroupCommitter
from producer_api.quick_check import quick_load
from shared.problems import http_exception_to_problem
from shared.runtime import Runtime

log = structlog.get_logger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_PATH = "/v1/messages"


class FastAccept:
    """WSGI middleware: accepts plain single messages, hands every other request to `app`."""

    def __init__(self, app: WSGIApp, runtime: Runtime, gate: ApiKeyGate, max_body: int) -> None:
        self.app = app
        self.gate = gate
        self.max_body = max_body
        self.committer = GroupCommitter(runtime.engine)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        body = self._plain_message(environ)
        if body is None:
            return self.app(environ, start_response)
        try:
            owner = self.gate.admit(environ.get("HTTP_AUTHORIZATION", ""))
        except HTTPException:
            return self.app(environ, start_response)  # it words the 401 or 429 itself
        try:
            accepted = intake.accept_plain(owner.app_id, body)
            self.committer.store(accepted)
        except Exception:
            log.exception("api.accept_failed")
            return http_exception_to_problem(InternalServerError())(environ, start_response)
        answer = accepted.answer() | {"created_at": accepted.created_at.isoformat()}
        payload = (json.dumps(answer, separators=(",", ":"), sort_keys=True) + "\n").encode()
        location = f"{environ.get('SCRIPT_NAME', '')}{_PATH}/{accepted.id}"
        start_response(
            "202 ACCEPTED",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                ("Location", location),
            ],
        )
        return [payload]

    def _plain_message(self, environ: dict[str, Any]) -> dict[str, Any] | None:
        """The loaded message if this request is a plain single one, else None. The body it
        read is put back for the Flask app."""
        if (
            environ.get("REQUEST_METHOD") != "POST"
            or environ.get("PATH_INFO") != _PATH
            or "HTTP_IDEMPOTENCY_KEY" in environ
        ):
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return None
        if not 0 < length <= self.max_body:
            return None
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)
        try:
            parsed = json.loads(raw)
        except ValueError:
            return None
        if may_hold_unstorable(raw) and next(unstorable(parsed), None) is not None:
            return None
        body = quick_load(parsed, channel_names)
        if body is None or not intake.is_plain(body):
            return None
        return body
