"""A local FCM (HTTP v1) that checks each request as Google's servers would.

`service_account()` writes a service account key file (a fresh RSA key) whose `token_uri` is
this server's `/token`. A token request must be the `jwt-bearer` grant with an RS256 assertion
that verifies with that key and names the account as `iss`, the token endpoint as `aud` and
the FCM scope; it is answered an access token. A send must be
`POST /v1/projects/{project_id}/messages:send` with `Authorization: Bearer` a token this server
issued and has not revoked, and a `message` with a `token`, a `notification` of strings and
`data` of strings only. A request that fails a check is answered as FCM would (400, 401) and
kept in `problems`; one that passes is kept in `received`, then answered as told
(`tests.channel_harness.Answer`: 200, 429 with Retry-After, 500, 404 `UNREGISTERED`; a hang
or refused connections through a `FaultProxy` in front).
"""

from __future__ import annotations

import json
import re
import secrets
import tempfile
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from channels.push_platforms.fcm import JWT_BEARER, SCOPE
from tests.channel_harness import Answer
from tests.proxied_server import ProxiedHttpServer

PROJECT = "omnipush-test"
CLIENT_EMAIL = f"sender@{PROJECT}.iam.gserviceaccount.com"
RETRY_AFTER_SECONDS = 7
_SEND_PATH = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")


def _error(status: int, code: str, message: str, error_code: str | None = None) -> dict[str, Any]:
    details = (
        [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]
        if error_code
        else []
    )
    return {"error": {"code": status, "message": message, "status": code, "details": details}}


_ANSWERS: dict[Answer, tuple[int, dict[str, Any]]] = {
    Answer.SLOW_DOWN: (429, _error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", "QUOTA_EXCEEDED")),
    Answer.SERVER_ERROR: (500, _error(500, "INTERNAL", "Internal error.", "INTERNAL")),
    Answer.REJECT_ADDRESS: (
        404,
        _error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"),
    ),
}


class FcmServer(ProxiedHttpServer):
    """The token endpoint and the FCM v1 send endpoint; see the module docstring."""

    def __init__(self, token_lifetime: int = 3600) -> None:
        self.token_lifetime = token_lifetime
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.issued: set[str] = set()
        self.token_requests = 0
        self.received: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()
        self._files = tempfile.TemporaryDirectory()
        super().__init__(self._handler())

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        super().__exit__(_type, _value, _traceback)
        self._files.cleanup()

    def service_account(self) -> str:
        """The path of a key file for this server's project, as the Firebase console gives."""
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path = Path(self._files.name) / "service-account.json"
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": PROJECT,
                    "private_key_id": secrets.token_hex(20),
                    "private_key": pem,
                    "client_email": CLIENT_EMAIL,
                    "token_uri": f"{self.origin}/token",
                }
            )
        )
        return str(path)

    def revoke_tokens(self) -> None:
        """Every access token issued so far stops working (answered 401)."""
        with self._lock:
            self.issued.clear()

    def token(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.token_requests += 1
        if form.get("grant_type") != [JWT_BEARER] or len(form.get("assertion", [])) != 1:
            return 400, {"error": "unsupported_grant_type"}
        try:
            claims = jwt.decode(
                form["assertion"][0],
                self.key.public_key(),
                algorithms=["RS256"],
                audience=f"{self.origin}/token",
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.PyJWTError as error:
            return 400, {"error": "invalid_grant", "error_description": str(error)}
        if claims["iss"] != CLIENT_EMAIL or claims["scope"] != SCOPE:
            return 400, {"error": "invalid_scope"}
        token = f"ya29.{secrets.token_urlsafe(24)}"
        with self._lock:
            self.issued.add(token)
        return 200, {
            "access_token": token,
            "expires_in": self.token_lifetime,
            "token_type": "Bearer",
        }

    def send(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        match = _SEND_PATH.fullmatch(path)
        if match is None or match["project"] != PROJECT:
            return 404, _error(404, "NOT_FOUND", "No such project.")
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        with self._lock:
            known = bearer in self.issued
        if not known:
            return 401, _error(401, "UNAUTHENTICATED", "Request had invalid credentials.")
        problem = _message_problem(body)
        if problem:
            return 400, _error(400, "INVALID_ARGUMENT", problem, "INVALID_ARGUMENT")
        message = json.loads(body)["message"]
        self.received.append(message)
        if self.mode in _ANSWERS:
            return _ANSWERS[self.mode]
        return 200, {"name": f"projects/{PROJECT}/messages/{secrets.randbelow(10**12)}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if self.path == "/token":
                    status, answer = server.token(parse_qs(body.decode()))
                else:
                    status, answer = server.send(self.path, headers, body)
                if status in (400, 401):
                    server.problems.append(json.dumps(answer))
                data = json.dumps(answer).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", str(RETRY_AFTER_SECONDS))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the tests read `received` and `problems` instead."""

        return Handler


def _message_problem(body: bytes) -> str | None:
    """What FCM would refuse in a send's body, or None."""
    try:
        message = json.loads(body)["message"]
    except (ValueError, KeyError, TypeError):
        return "Invalid JSON payload received."
    if not isinstance(message, dict) or not isinstance(message.get("token"), str):
        return "message.token is required."
    notification = message.get("notification", {})
    if not all(isinstance(v, str) for v in notification.values()):
        return "notification values must be strings."
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return "data values must be strings."
    return None
