"""Chunked request bodies read to a known length, so that every body limit applies to them.

A body sent with `Transfer-Encoding: chunked` has no Content-Length. werkzeug then reads it only
up to the app's limit and silently drops the rest, so an oversized body was answered as invalid
JSON (400) instead of too large (413). This WSGI layer reads such a body up to one byte more
than `largest` (the largest body any route takes) and hands it on with that length: each route
then checks its own limit as it does for any body, and one over the largest is refused by all.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import IO, Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ChunkedBody:
    """WSGI middleware: gives chunked request bodies a Content-Length (see the module)."""

    def __init__(self, app: WSGIApp, largest: int) -> None:
        self.app = app
        self.largest = largest

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        encoding = environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if "chunked" in encoding and not environ.get("CONTENT_LENGTH"):
            body = _read_up_to(environ["wsgi.input"], self.largest + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            # The app now gets the body whole, not in chunks (werkzeug ignores the length of
            # a request that says it is chunked).
            del environ["HTTP_TRANSFER_ENCODING"]
        return self.app(environ, start_response)


def _read_up_to(stream: IO[bytes], limit: int) -> bytes:
    parts: list[bytes] = []
    left = limit
    while left > 0:
        part = stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
