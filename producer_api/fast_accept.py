"""The common single message, accepted without the Flask machinery around it.

Most calls to `POST /v1/messages` carry a plain message (users, installed channels, plain
content; no topic or template to look up, no idempotency key). For those, the request parsing,
routing, argument and response layers cost several times what storing the message does. This
WSGI middleware sits in front of the Flask app and accepts exactly such a message itself, with
the same pieces the Flask view uses: the API-key gate, the schema's quick check, the intake; and
it stores concurrent requests' messages together (`producer_api.group_commit`).
Anything else, and anything it is unsure of (a body it cannot read, an error of any kind before
the message is stored), goes to the Flask app unchanged, which then answers as it always does:
the API behaves the same either way; the tests run through this middleware. A store that cannot
be reached is answered here as the Flask app would answer it, with a 503.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import structlog
from flask.json.provider import JSONProvider
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.wrappers import Response

from channels.registry import channel_names
from producer_api import intake
from producer_api.api_keys import KeyOwner
from producer_api.auth import ApiKeyGate
from producer_api.fanout import FanoutGuard
from producer_api.group_commit import GroupCommitter, StoreTimeout
from producer_api.metrics import ACCEPTED
from producer_api.quick_check import quick_load
from shared import json_body
from shared.blueprint import may_hold_unstorable, unstorable
from shared.http_metrics import observe
from shared.problems import http_exception_to_problem, store_unavailable
from shared.runtime import Runtime
from shared.store_outage import RETRY_AFTER_SECONDS, is_store_outage

log = structlog.get_logger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_PATH = "/v1/messages"
_NOT_ACCEPTED = (
    "The store could not be reached in time, so the message was not accepted: send it again "
    f"in {RETRY_AFTER_SECONDS} s."
)


def _maybe_accepted(message_id: str) -> Response:
    """The 503 of a message whose statement the store may yet have committed."""
    return store_unavailable(
        f"The store did not confirm the message in time: it may have been accepted as "
        f"{message_id} (GET {_PATH}/{message_id} answers 404 if it was not), so sending it "
        "again may send it twice. A message sent with an Idempotency-Key is safe to retry "
        "with the same key.",
        message_id=message_id,
    )


class FastAccept:
    """WSGI middleware: accepts plain single messages, hands every other request to `app`."""

    def __init__(
        self,
        app: WSGIApp,
        json: JSONProvider,
        runtime: Runtime,
        gate: ApiKeyGate,
        fanout: FanoutGuard,
        max_body: int,
    ) -> None:
        self.app = app
        self.json = json  # the Flask app's, so that both paths write the same JSON
        self.gate = gate
        self.fanout = fanout
        self.max_body = max_body
        self.committer = GroupCommitter(runtime.engine)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.perf_counter()
        body = self._plain_message(environ)
        if body is None:
            return self.app(environ, start_response)
        try:
            owner = self.gate.admit(environ)
        except HTTPException:
            return self.app(environ, start_response)  # it words the 401 or 429 itself
        except Exception as error:
            if not is_store_outage(error):
                return self.app(environ, start_response)  # its error handlers word a 500
            log.warning("api.store_unavailable", detail=type(error).__name__)
            response: Response = store_unavailable(_NOT_ACCEPTED)
        else:
            response = self._accept(owner, body, environ)
        # The Flask app counts the requests it answers; these it never sees.
        observe("POST", _PATH, response.status_code, time.perf_counter() - started)
        return response(environ, start_response)

    def _accept(self, owner: KeyOwner, body: dict[str, Any], environ: dict[str, Any]) -> Response:
        """202 once the message is stored; else a problem that says whether it may be."""
        try:
            accepted = intake.accept_plain(owner.app_id, body)
            self.fanout.admit(owner, accepted.recipients)
        except HTTPException as refused:
            return http_exception_to_problem(refused)
        try:
            self.committer.store(accepted)
        except StoreTimeout as timeout:
            log.warning(
                "api.store_timeout", message_id=accepted.id, may_be_stored=timeout.may_be_stored
            )
            if timeout.may_be_stored:
                return _maybe_accepted(accepted.id)
            return store_unavailable(_NOT_ACCEPTED)
        except Exception as error:
            if is_store_outage(error):
                log.warning(
                    "api.store_unavailable", message_id=accepted.id, detail=type(error).__name__
                )
                return _maybe_accepted(accepted.id)
            log.exception("api.accept_failed")
            return http_exception_to_problem(InternalServerError())
        ACCEPTED.inc()
        response = cast(Response, self.json.response(accepted.json_answer()))
        response.status_code = 202
        response.headers["Location"] = f"{environ.get('SCRIPT_NAME', '')}{_PATH}/{accepted.id}"
        return response

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
            parsed = json_body.loads(raw)
        except ValueError:  # not JSON, or JSON beyond the limits: the Flask app words the 400
            return None
        if may_hold_unstorable(raw) and next(unstorable(parsed), None) is not None:
            return None
        body = quick_load(parsed, channel_names)
        if body is None or not intake.is_plain(body):
            return None
        return body
