"""WSGI middleware: the gateway's websockets carry their frames uncompressed.

Browsers offer permessage-deflate (RFC 7692) in every websocket handshake, and simple-websocket,
which serves Engine.IO's websockets, accepts the offer. The extension then keeps a zlib
compressor for each socket's whole life, about 90 KiB of resident memory per socket: more than
half of what an idle socket costs the gateway, to shrink notifications of a few hundred bytes.
Without the offer in the request the handshake answers without the extension, and the socket
works as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ws_gateway.slow_consumers import WSGIApp

#: The WSGI key of the handshake's `Sec-WebSocket-Extensions` header.
EXTENSIONS_HEADER = "HTTP_SEC_WEBSOCKET_EXTENSIONS"


def without_compression(app: WSGIApp) -> WSGIApp:
    """`app`, with each websocket handshake's offer of extensions (compression) removed."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            environ.pop(EXTENSIONS_HEADER, None)
        return app(environ, start_response)

    return wrapped
