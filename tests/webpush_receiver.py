"""A local Web Push service that checks each request as a push service and a browser would.

`subscribe()` makes a subscription as a browser does: a P-256 key pair and a 16-byte auth
secret of its own, and an endpoint on this server. A POST to an endpoint must carry
`Content-Encoding: aes128gcm`, a `TTL`, a valid `Urgency`, and `Authorization: vapid t=, k=`
whose ES256 JWT verifies with `k`, names this service's origin as `aud`, expires within 24
hours and names the expected `sub`; its body must decrypt (RFC 8291) with the subscription's
private key. A request that fails any check is answered 400 or 401 and kept in `problems`;
one that passes is kept in `received` (with its decrypted payload), then answered as told
(`tests.channel_harness.Answer`: 201, 429 with Retry-After, 503, 410; a hang or refused
connections through a `FaultProxy` in front).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from channels.vapid import b64url_decode, b64url_encode, public_key_of, uncompressed
from tests.channel_harness import Answer
from tests.proxied_server import ProxiedHttpServer

RETRY_AFTER_SECONDS = 7
#: A well-formed subscription's keys, for tests that only store one: the user agent's public
#: key and auth secret of RFC 8291's example (appendix A).
P256DH = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
URGENCIES = ("very-low", "low", "normal", "high")
_STATUS = {
    Answer.OK: 201,
    Answer.SLOW_DOWN: 429,
    Answer.SERVER_ERROR: 503,
    Answer.REJECT_ADDRESS: 410,
}


@dataclass(frozen=True)
class BrowserSubscription:
    """What a browser keeps of a subscription (its private key) and what it gives the app."""

    name: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    endpoint: str

    def as_json(self) -> dict[str, Any]:
        """The PushSubscription as `JSON.stringify` gives it to the app."""
        return {
            "endpoint": self.endpoint,
            "keys": {
                "p256dh": b64url_encode(uncompressed(self.private_key.public_key())),
                "auth": b64url_encode(self.auth),
            },
            "expirationTime": None,
        }


@dataclass(frozen=True)
class Received:
    """A push message that passed every check."""

    subscription: str
    payload: dict[str, Any]
    headers: dict[str, str]
    claims: dict[str, Any]


class WebPushReceiver(ProxiedHttpServer):
    """The push service; see the module docstring. Use it as a context manager."""

    def __init__(self, subject: str, application_server_key: str) -> None:
        self.subject = subject
        self.application_server_key = application_server_key
        self.subscriptions: dict[str, BrowserSubscription] = {}
        self.received: list[Received] = []
        self.problems: list[str] = []
        super().__init__(self._handler())

    def subscribe(self) -> BrowserSubscription:
        name = secrets.token_urlsafe(12)
        subscription = BrowserSubscription(
            name,
            ec.generate_private_key(ec.SECP256R1()),
            secrets.token_bytes(16),
            f"{self.origin}/push/{name}",
        )
        self.subscriptions[name] = subscription
        return subscription

    def check(self, path: str, headers: dict[str, str], body: bytes) -> Received | tuple[int, str]:
        """The request's message, or the status and reason a push service would refuse it."""
        subscription = self.subscriptions.get(path.removeprefix("/push/"))
        if subscription is None:
            return 404, "no such subscription"
        if headers.get("content-encoding") != "aes128gcm":
            return 400, "Content-Encoding must be aes128gcm"
        if not headers.get("ttl", "").isdigit():
            return 400, "TTL must be a number of seconds"
        if headers.get("urgency", "normal") not in URGENCIES:
            return 400, "bad Urgency"
        claims = self._vapid_claims(headers.get("authorization", ""))
        if isinstance(claims, str):
            return 401, claims
        try:
            plain = http_ece.decrypt(
                body,
                private_key=subscription.private_key,
                auth_secret=subscription.auth,
                version="aes128gcm",
            )
            payload = json.loads(plain)
        except Exception as error:  # any failure to decrypt is the sender's fault
            return 400, f"cannot decrypt: {type(error).__name__}: {error}"
        return Received(subscription.name, payload, headers, claims)

    def _vapid_claims(self, authorization: str) -> dict[str, Any] | str:
        scheme, _, rest = authorization.partition(" ")
        if scheme.lower() != "vapid":
            return "Authorization must be vapid"
        params = dict(part.strip().partition("=")[::2] for part in rest.split(",") if "=" in part)
        token, key = params.get("t"), params.get("k")
        if not token or not key:
            return "vapid needs t and k"
        if key != self.application_server_key:
            return "k is not the key the subscription was made with"
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                public_key_of(b64url_decode(key)),
                algorithms=["ES256"],
                audience=self.origin,
                options={"require": ["aud", "exp", "sub"]},
            )
        except (jwt.PyJWTError, ValueError) as error:
            return f"bad vapid JWT: {error}"
        if claims["exp"] > time.time() + 24 * 3600:
            return "exp is more than 24 hours away"
        if claims["sub"] != self.subject:
            return f"sub is {claims['sub']!r}"
        return claims

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                checked = receiver.check(self.path, headers, body)
                if isinstance(checked, tuple):
                    receiver.problems.append(checked[1])
                    self._reply(*checked)
                    return
                receiver.received.append(checked)
                status = _STATUS.get(receiver.mode, 201)
                extra = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 429 else {}
                if status == 201:
                    extra["Location"] = f"{receiver.origin}/message/{secrets.token_hex(8)}"
                self._reply(status, "", extra)

            def _reply(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
                data = text.encode()
                self.send_response(status)
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the tests read `received` and `problems` instead."""

        return Handler
