"""A local APNs provider API that checks each request as Apple documents it.

It speaks HTTP/2 only, over TLS with a self-signed certificate for 127.0.0.1 (the sender
trusts it through `[apns] ca_file`), on hypercorn in a thread. A push must be
`POST /3/device/<hex token>` with a provider token (ES256 JWT, `kid` the key id, `iss` the
team, `iat` within the hour) that verifies with the public part of the team's key, the
`apns-topic`, `apns-push-type: alert`, an `apns-priority` of 10 or 5, an `apns-id` that is a
UUID, and an `aps.alert` of strings. It answers with APNs' documented reasons, or as a
`tests.channel_harness.Answer` says; DOWN and TIMEOUT come from a `FaultProxy` in front (see
the rig).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypercorn.asyncio import serve
from hypercorn.config import Config

from tests.channel_harness import Answer
from tests.stack import free_port, wait_until


@dataclass(frozen=True)
class Request:
    """One HTTP request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    http_version: str


@dataclass(frozen=True)
class Reply:
    """What the fake answers."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Reply]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def asgi_app(handler: Handler) -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    """A bare ASGI application answering every HTTP request with `handler`."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        request = Request(scope["method"], scope["path"], headers, body, scope["http_version"])
        reply = handler(request)
        encoded = json.dumps(reply.body).encode() if reply.body is not None else b""
        out = [(k.encode(), v.encode()) for k, v in reply.headers.items()]
        if reply.body is not None:
            out.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": reply.status, "headers": out})
        await send({"type": "http.response.body", "body": encoded})

    return app


class HypercornThread:
    """Serves an ASGI app on 127.0.0.1 (TLS when given a certificate) until `stop()`."""

    def __init__(self, handler: Handler, certfile: str | None = None, keyfile: str | None = None):
        self.port = free_port()
        self.config = Config()
        self.config.bind = [f"127.0.0.1:{self.port}"]
        self.config.accesslog = None
        self.config.errorlog = None
        if certfile and keyfile:
            self.config.certfile, self.config.keyfile = certfile, keyfile
        self.app = asgi_app(handler)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            await serve(self.app, self.config, shutdown_trigger=self._stopping.wait)  # type: ignore[arg-type]

        asyncio.run(main())

    def start(self) -> HypercornThread:
        self._thread.start()

        def listening() -> bool:
            with socket.socket() as sock, suppress(OSError):
                sock.connect(("127.0.0.1", self.port))
                return True
            return False

        wait_until(listening, 10, "the fake provider to listen")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)


class ApnsFake:
    """APNs' provider API over HTTP/2 and TLS, for one signing key, team and topic."""

    def __init__(self, tls_dir: Path, key_id: str = "ABC123DEFG", team_id: str = "TEAM123456"):
        self.key_id, self.team_id, self.topic = key_id, team_id, "com.example.app"
        self.signing_key = ec.generate_private_key(ec.SECP256R1())
        self.mode = Answer.OK
        self.unregistered: set[str] = set()
        self.bad_tokens: set[str] = set()
        self.sent: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.provider_tokens: set[str] = set()
        self.certfile, self.keyfile = self_signed_certificate(tls_dir)
        self.server = HypercornThread(self.handle, str(self.certfile), str(self.keyfile))

    def key_pem(self) -> str:
        """The `.p8` file Apple hands out: the signing key in PKCS#8 PEM."""
        return self.signing_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def answer(self, mode: Answer) -> None:
        self.mode = mode

    def handle(self, request: Request) -> Reply:
        found = re.fullmatch(r"/3/device/([0-9a-fA-F]+)", request.path)
        if request.method != "POST" or found is None:
            return _apns_error(404, "BadPath")
        if request.http_version != "2":
            return _apns_error(400, "BadPath")
        problem = self._header_problem(request.headers)
        if problem:
            return _apns_error(403 if "Token" in problem else 400, problem)
        try:
            payload = json.loads(request.body)
            alert = payload["aps"]["alert"]
            if not isinstance(alert["title"], str) or not isinstance(alert["body"], str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _apns_error(400, "BadMessageId" if not request.body else "PayloadEmpty")
        token = found.group(1)
        if self.mode is Answer.SLOW_DOWN:
            return _apns_error(429, "TooManyRequests")
        if self.mode is Answer.SERVER_ERROR:
            return _apns_error(503, "ServiceUnavailable")
        if token in self.bad_tokens:
            return _apns_error(400, "BadDeviceToken")
        if self.mode is Answer.REJECT_ADDRESS or token in self.unregistered:
            reply = _apns_error(410, "Unregistered")
            assert reply.body is not None
            reply.body["timestamp"] = int(time.time() * 1000)
            return reply
        self.sent.append((token, request.headers, payload))
        apns_id = request.headers.get("apns-id") or str(uuid.uuid4()).upper()
        return Reply(200, None, {"apns-id": apns_id})

    def _header_problem(self, headers: dict[str, str]) -> str | None:
        """The APNs reason for refusing these headers, or None."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "MissingProviderToken"
        try:
            if jwt.get_unverified_header(token).get("kid") != self.key_id:
                return "InvalidProviderToken"
            claims = jwt.decode(
                token,
                self.signing_key.public_key(),
                algorithms=["ES256"],
                options={"require": ["iss", "iat"]},
            )
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        if claims["iss"] != self.team_id:
            return "InvalidProviderToken"
        if time.time() - float(claims["iat"]) > 3600:
            return "ExpiredProviderToken"
        self.provider_tokens.add(token)
        if headers.get("apns-topic") != self.topic:
            return "BadTopic" if headers.get("apns-topic") else "MissingTopic"
        if headers.get("apns-push-type") != "alert":
            return "InvalidPushType"
        if headers.get("apns-priority") not in ("10", "5"):
            return "BadPriority"
        apns_id = headers.get("apns-id")
        if apns_id is not None:
            try:
                uuid.UUID(apns_id)
            except ValueError:
                return "BadMessageId"
        return None


def _apns_error(status: int, reason: str) -> Reply:
    return Reply(status, {"reason": reason}, {"apns-id": str(uuid.uuid4()).upper()})


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key, as PEM files in `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


@contextmanager
def running_apns() -> Iterator[ApnsFake]:
    """An APNs fake (its certificate in a temporary directory), serving until the block ends."""
    with tempfile.TemporaryDirectory() as directory:
        fake = ApnsFake(Path(directory))
        fake.server.start()
        try:
            yield fake
        finally:
            fake.server.stop()
