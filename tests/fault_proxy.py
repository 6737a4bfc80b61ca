"""A TCP proxy that a test owns between a service and Redis, RabbitMQ or PostgreSQL, to fault it.

The machine's services are shared, so tests never stop or restart them. Instead a service under
test is pointed at a `FaultProxy`, and the test makes the dependency misbehave as seen through it:

- `hang()`: connections (old and new) are accepted but no byte moves in either direction, as
  with a server that accepts TCP and never answers; `resume()` lets the held bytes through.
- `drop()`: every open connection is closed at once, as a server restart does to pooled
  connections; new connections are forwarded as before.
- `refuse()`: new connections are closed as soon as they are accepted; `resume()` ends it.
- `withhold_replies(from_piece)`: from the first piece the server sends for which `from_piece`
  is true (at once, or say from the first AMQP publisher confirm), nothing more from the server
  reaches the client, while the client's bytes still reach the server. A service then waits
  exactly where it needs that answer (publishes out but unconfirmed, a worker mid-send), and a
  test can kill it there: when a client goes away the proxy closes its server side too, so the
  broker sees the consumer gone and requeues what it had not acked. Nothing withheld is ever
  passed on.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType

import pika.spec

#: Splits what arrived from the server into the pieces `withhold_replies` looks at; keeps any
#: partial rest in the buffer.
Framing = Callable[[bytearray], list[bytes]]


def whole_chunks(buffer: bytearray) -> list[bytes]:
    """Every read as one piece (for protocols whose framing a test does not care about)."""
    piece = bytes(buffer)
    buffer.clear()
    return [piece]


def amqp_frames(buffer: bytearray) -> list[bytes]:
    """The complete AMQP 0-9-1 frames at the front of `buffer` (header, payload, frame end)."""
    frames = []
    while len(buffer) >= pika.spec.FRAME_HEADER_SIZE:
        size = int.from_bytes(buffer[3:7], "big")
        end = pika.spec.FRAME_HEADER_SIZE + size + pika.spec.FRAME_END_SIZE
        if len(buffer) < end:
            break
        frames.append(bytes(buffer[:end]))
        del buffer[:end]
    return frames


_CONFIRMS = {pika.spec.Basic.Ack.INDEX, pika.spec.Basic.Nack.INDEX}


def is_publisher_confirm(frame: bytes) -> bool:
    """A Basic.Ack or Basic.Nack method frame: from a broker, only publisher confirms are."""
    method = int.from_bytes(frame[7:11], "big")
    return frame[0] == pika.spec.FRAME_METHOD and method in _CONFIRMS


def everything(_piece: bytes) -> bool:
    return True


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `target`, until told to hang, drop, refuse or withhold.

    `framing` splits the server's bytes into the pieces that `withhold_replies` judges."""

    def __init__(self, target_host: str, target_port: int, framing: Framing = whole_chunks) -> None:
        self.target = (target_host, target_port)
        self._framing = framing
        self._withhold_from: Callable[[bytes], bool] | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = False
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[tuple[socket.socket, socket.socket | None]] = []
        self._accepted = 0

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True).start()
        return self

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def address(self) -> str:
        """Where clients connect: `127.0.0.1:port`."""
        return f"127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        """How many client connections the proxy has accepted so far."""
        return self._accepted

    def hang(self) -> None:
        """Accept, but move no byte either way, until `resume()`."""
        self._flowing.clear()

    def refuse(self) -> None:
        """Close new connections as soon as they are accepted, until `resume()`."""
        self._refusing = True

    def withhold_replies(self, from_piece: Callable[[bytes], bool] = everything) -> None:
        """On every connection, from the first piece the server sends for which `from_piece` is
        true, pass nothing more from the server to the client."""
        self._withhold_from = from_piece

    def resume(self) -> None:
        """Forward normally again (what was withheld stays withheld)."""
        self._refusing = False
        self._flowing.set()

    def drop(self) -> None:
        """Close every open connection now; later ones are handled as the mode says."""
        with self._lock:
            connections, self._connections = self._connections, []
        for client, upstream in connections:
            _close(client)
            if upstream is not None:
                _close(upstream)

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        _close(self._listener)
        self.drop()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._accepted += 1
            if self._refusing:
                _close(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self._connections.append((client, None))
        # A hung proxy holds the connection open without even reaching the target.
        self._flowing.wait()
        if self._closed.is_set():
            _close(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)
            return
        with self._lock:
            if (client, None) not in self._connections:
                # Dropped while connecting.
                _close(client)
                _close(upstream)
                return
            self._connections.remove((client, None))
            self._connections.append((client, upstream))
        self._pump(client, upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        replies = bytearray()
        withholding = False
        try:
            while not self._closed.is_set():
                if not self._flowing.wait(0.05):
                    continue
                readable, _, _ = select.select([client, upstream], [], [], 0.05)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client:
                        upstream.sendall(data)
                        continue
                    replies += data
                    for piece in self._framing(replies):
                        withhold_from = self._withhold_from
                        withholding = withholding or (
                            withhold_from is not None and withhold_from(piece)
                        )
                        if not withholding:
                            client.sendall(piece)
        except (OSError, ValueError):
            return
        finally:
            _close(client)
            _close(upstream)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with suppress(OSError):
        sock.close()
