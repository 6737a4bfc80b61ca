"""A local HTTP/1.1 server behind a fault proxy of the test's: the base of the providers'
stand-ins, which answer as a `tests.channel_harness.Answer` says. The proxy gives the
answers no server gives by itself: a hang (TIMEOUT) and refused connections (DOWN)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

from tests.channel_harness import Answer
from tests.fault_proxy import FaultProxy


class ProxiedHttpServer:
    """Serves `handler` on 127.0.0.1; clients reach it at `origin`, through `proxy`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.mode = Answer.OK
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.http.daemon_threads = True
        self.proxy = FaultProxy("127.0.0.1", self.http.server_address[1])
        self.origin = f"http://{self.proxy.address}"

    def __enter__(self) -> Self:
        # A short poll: stopping the server waits for one.
        threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True).start()
        self.proxy.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.proxy.close()
        self.http.shutdown()
        self.http.server_close()

    def answer(self, mode: Answer) -> None:
        """Answer every following request this way."""
        self.mode = mode
        if mode is Answer.TIMEOUT:
            self.proxy.hang()
        elif mode is Answer.DOWN:
            self.proxy.refuse()
        else:
            self.proxy.resume()
