"""What a browser that stops reading may cost the gateway: a bounded amount, then its connection.

Engine.IO queues every packet for a socket and one writer per socket sends them in turn. A
browser that reads nothing (a frozen tab, a stalled network) blocks its writer once the TCP
buffers are full, and without a limit its queue would grow for as long as notifications come.
Two limits cut such a socket off:

- a socket with `MAX_PENDING` packets waiting is cut when the next notification comes for it;
- a websocket whose writer has waited `WRITE_PATIENCE_SECONDS` for the browser to take one frame
  is cut by the sweep that looks at every websocket once a second.

Cutting a socket ends its Engine.IO session (its Socket.IO disconnect says "slow consumer") and
drops its TCP connection, which frees the writer. Nothing is lost: the browser reconnects and
says `since`, and the gateway replays what it missed from the store.

The websockets' sockets are wrapped on the way in (`patient_sockets`) so that a frame always
goes out whole: simple-websocket writes each frame with one `socket.send`, which under gevent
may take only part of a large frame and so break the connection under load (its issue 45).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from flask_socketio import SocketIO

from ws_gateway.metrics import SLOW_CONSUMERS

log = structlog.get_logger("ws_gateway.slow_consumers")

#: Packets that may wait for one socket; with notifications of a few KiB, a few MiB at most.
MAX_PENDING = 1000
#: How long a websocket's writer waits for the browser to take one frame.
WRITE_PATIENCE_SECONDS = 10.0
SWEEP_SECONDS = 1.0
#: Packets waiting below which a socket takes the next page of its replay.
DRAINED = 100
DRAIN_POLL_SECONDS = 0.05
#: The reason a cut socket's disconnect gives.
SLOW_CONSUMER = "slow consumer"
#: Why a socket was cut off (the metric's label): too much waiting for it, or a frame stalled.
BACKLOG = "backlog"
STALLED = "stalled"
#: Where a websocket request's environ keeps its `PatientSocket`.
TRANSPORT_KEY = "omnipush.transport"
#: Where simple-websocket finds the connection's socket, by server.
_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class PatientSocket:
    """A websocket's TCP socket whose sends write whole frames, one at a time, and that can be
    cut off while a send waits for the peer (everything else goes to the socket itself)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # Looked up when made: under gevent it is the cooperative lock.
        self._sending = threading.Lock()
        #: When the send in progress began (monotonic), or None.
        self.sending_since: float | None = None
        self.aborted = False

    def send(self, data: bytes, flags: int = 0) -> int:
        with self._sending:
            if self.aborted:
                raise BrokenPipeError(SLOW_CONSUMER)
            self.sending_since = time.monotonic()
            try:
                self._sock.sendall(data, flags)
            except OSError as error:
                if self.aborted:
                    raise BrokenPipeError(SLOW_CONSUMER) from error
                raise
            finally:
                self.sending_since = None
        return len(data)

    def stalled_for(self, now: float) -> float:
        """How long the send in progress has waited (0 when none is)."""
        since = self.sending_since
        return 0.0 if since is None else now - since

    def abort(self) -> None:
        """Drop the connection: a send waiting on it fails, and its reader sees the end."""
        self.aborted = True
        with contextlib.suppress(OSError):  # already closed by the peer or the server
            self._sock.shutdown(socket.SHUT_RDWR)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class SlowConsumers:
    """Finds and cuts off the sockets of one gateway process that stopped reading."""

    def __init__(
        self,
        socketio: SocketIO,
        *,
        max_pending: int = MAX_PENDING,
        write_patience: float = WRITE_PATIENCE_SECONDS,
    ) -> None:
        self.socketio = socketio
        self.max_pending = max_pending
        self.write_patience = write_patience
        self._transports: weakref.WeakSet[PatientSocket] = weakref.WeakSet()

    def patient_sockets(self, app: WSGIApp) -> WSGIApp:
        """WSGI middleware: each websocket request's socket becomes a `PatientSocket`."""

        def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
                for key in _SOCKET_KEYS:
                    if (sock := environ.get(key)) is not None:
                        transport = PatientSocket(sock)
                        environ[key] = environ[TRANSPORT_KEY] = transport
                        self._transports.add(transport)
                        break
            return app(environ, start_response)

        return wrapped

    def admit(self, eio_sid: str) -> bool:
        """Whether a notification may be queued for the socket of Engine.IO session `eio_sid`;
        one that has too many waiting already is cut off instead."""
        eio_socket = self._open_socket(eio_sid)
        if eio_socket is None:
            return False
        pending = eio_socket.queue.qsize()
        if pending < self.max_pending:
            return True
        self._cut(eio_sid, BACKLOG, pending=pending)
        return False

    def drained(self, sid: str) -> bool:
        """Wait until socket `sid` has taken most of what waits for it (for the next page of a
        replay); False if it is gone, or still full after the write patience."""
        eio_sid = self.socketio.server.manager.eio_sid_from_sid(sid, "/")
        deadline = time.monotonic() + self.write_patience
        while time.monotonic() < deadline:
            eio_socket = self._open_socket(eio_sid)
            if eio_socket is None:
                return False
            if eio_socket.queue.qsize() < DRAINED:
                return True
            self.socketio.sleep(DRAIN_POLL_SECONDS)
        return False

    def _open_socket(self, eio_sid: str | None) -> Any:
        """The Engine.IO socket of session `eio_sid`, unless it is gone or closed."""
        eio_socket = self.socketio.server.eio.sockets.get(eio_sid)
        return None if eio_socket is None or eio_socket.closed else eio_socket

    def run(self) -> None:
        """Cut off, once a second, every websocket whose writer has waited too long."""
        while True:
            self.socketio.sleep(SWEEP_SECONDS)
            self.sweep()

    def sweep(self) -> int:
        """Cut off the websockets stalled past the patience now; how many."""
        now = time.monotonic()
        stalled = [t for t in list(self._transports) if t.stalled_for(now) > self.write_patience]
        for transport in stalled:
            eio_sid = self._eio_sid_of(transport)
            if eio_sid is not None:
                self._cut(eio_sid, STALLED, waited_s=self.write_patience)
            else:
                transport.abort()
        return len(stalled)

    def _eio_sid_of(self, transport: PatientSocket) -> str | None:
        for eio_sid, environ in list(self.socketio.server.environ.items()):
            if environ.get(TRANSPORT_KEY) is transport:
                return str(eio_sid)
        return None

    def _cut(self, eio_sid: str, reason: str, **detail: float) -> None:
        """End the socket's session, then drop its connection (freeing a blocked writer)."""
        server = self.socketio.server
        transport = (server.environ.get(eio_sid) or {}).get(TRANSPORT_KEY)
        eio_socket = server.eio.sockets.get(eio_sid)
        if eio_socket is not None:
            eio_socket.close(wait=False, abort=True, reason=SLOW_CONSUMER)
        if isinstance(transport, PatientSocket):
            transport.abort()
        SLOW_CONSUMERS.labels(reason=reason).inc()
        log.warning("gateway.slow_consumer", eio_sid=eio_sid, reason=reason, **detail)
