"""A TCP proxy a test puts in front of RabbitMQ or Redis to withhold what the server answers.

A service under test connects through it. Once `hold` is called, the server's bytes stop
reaching the client from a chosen point on (at once, or from the first AMQP publisher confirm),
while the client's bytes still reach the server. The service then waits exactly where it needs
that answer: a relay or dispatcher whose publishes went out but are unconfirmed, a worker in
the middle of a send. Nothing withheld is ever passed on; a test kills the service there, and
the proxy closes the server side of each connection when its client goes away, so the broker
sees the consumer gone and requeues what it had not acked.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

import pika.spec

#: Splits what arrived from the server into the pieces `hold` looks at; keeps any partial rest.
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


class HoldingProxy:
    """Listens on a free local port and forwards every connection to `upstream_port`."""

    def __init__(self, upstream_port: int, framing: Framing = whole_chunks) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._framing = framing
        self._hold_from: Callable[[bytes], bool] | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def hold(self, from_piece: Callable[[bytes], bool] = everything) -> None:
        """From the first piece the server sends for which `from_piece` is true, on every
        connection, pass nothing more from the server to the client."""
        self._hold_from = from_piece

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self._listener.accept()
                upstream = socket.create_connection(self._upstream)
            except OSError:
                return  # closed
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        buffer = bytearray()
        holding = False
        try:
            while data := upstream.recv(65536):
                buffer += data
                for piece in self._framing(buffer):
                    hold_from = self._hold_from
                    holding = holding or (hold_from is not None and hold_from(piece))
                    if not holding:
                        client.sendall(piece)
        except OSError:
            pass
        finally:
            _close(client, upstream)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):  # not connected any more
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
