"""A local webhook receiver that checks every request as a Standard Webhooks consumer would.

It verifies each POST with the `standardwebhooks` reference library (`Webhook.verify`: the
three headers, the signature, a timestamp within five minutes) and keeps what it received.
It answers as it is told (`tests.channel_harness.Answer`): 200; 429 with `Retry-After`; 503;
never within the client's timeout; 410 Gone (the endpoint is no more); or not at all, its
listening socket closed. A request that fails verification is answered 401 and kept as such.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from tests.channel_harness import Answer
from tests.stack import free_port

#: How long a request answered "timeout" is held (far beyond any client's timeout in tests).
HOLD_SECONDS = 30.0
RETRY_AFTER_SECONDS = 2


@dataclass(frozen=True)
class Received:
    """One request: its headers, raw body, and the payload if it verified (else None)."""

    path: str
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any] | None
    error: str | None

    @property
    def verified(self) -> bool:
        return self.payload is not None


class WebhookReceiver:
    """`url` takes webhooks signed with `secret` (settable, e.g. once an API generated it)."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.port = free_port()
        self.mode = Answer.OK
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def answer(self, mode: Answer) -> None:
        """Answer every following request this way (DOWN closes the listening socket)."""
        self._release.set()
        self._release = threading.Event()
        self.mode = mode
        if mode is Answer.DOWN:
            self._stop_server()
        elif self._server is None:
            self._start_server()

    def for_delivery(self, delivery_id: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.headers.get("webhook-id") == delivery_id]

    def _start_server(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True).start()
        self._server = server

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def hold(self) -> None:
        """Keep a request unanswered until the answer changes or the receiver stops."""
        self._release.wait(HOLD_SECONDS)

    def take(self, path: str, headers: dict[str, str], body: bytes) -> int:
        """Verify and keep one request; the status to answer with."""
        payload: dict[str, Any] | None = None
        error: str | None = None
        if self.secret is None:
            error = "the receiver has no secret"
        else:
            try:
                payload = Webhook(self.secret).verify(body, headers)
            except (WebhookVerificationError, ValueError) as refused:
                error = f"{type(refused).__name__}: {refused}"
        with self._lock:
            self.received.append(Received(path, headers, body, payload, error))
        return 401 if payload is None else 200

    def __enter__(self) -> WebhookReceiver:
        self._start_server()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._release.set()
        self._stop_server()


def _handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the channel's client expects

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            mode = receiver.mode
            if mode is Answer.TIMEOUT:
                receiver.hold()
                self.close_connection = True
                return
            status = receiver.take(self.path, headers, body)
            extra: dict[str, str] = {}
            if status == 200 and mode is Answer.SLOW_DOWN:
                status, extra = 429, {"Retry-After": str(RETRY_AFTER_SECONDS)}
            elif status == 200 and mode is Answer.SERVER_ERROR:
                status = 503
            elif status == 200 and mode is Answer.REJECT_ADDRESS:
                status = 410
            answer = json.dumps({"status": status}).encode()
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read `received`, not stderr."""

    return Handler
