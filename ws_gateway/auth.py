"""Where a browser's token comes from (Socket.IO `auth`, `?token=`, or `Authorization: Bearer`),
and where a reconnecting socket says it stopped (`since`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.live_feed import is_position
from shared.tokens import BrowserIdentity, BrowserToken, InvalidToken, read_browser_token

#: A JWT is far shorter; anything longer is refused before it is parsed.
MAX_TOKEN_LENGTH = 4096

__all__ = [
    "MAX_TOKEN_LENGTH",
    "BrowserIdentity",
    "BrowserToken",
    "InvalidToken",
    "bearer_token",
    "identify",
    "read_token",
    "socket_since",
    "socket_token",
]


def socket_token(auth: Any, query: Mapping[str, str]) -> str | None:
    """The token a Socket.IO client sent: `auth={"token": ...}` first, else `?token=`."""
    if isinstance(auth, Mapping):
        token = auth.get("token")
        if isinstance(token, str) and token:
            return token
    return query.get("token") or None


def socket_since(auth: Any, query: Mapping[str, str]) -> str | None:
    """The live feed position of the last notification a reconnecting client saw:
    `auth={"since": ...}` first, else `?since=`; None when it sent none. ValueError when what
    it sent is not a position."""
    since = auth.get("since") if isinstance(auth, Mapping) else None
    if since is None:
        since = query.get("since")
    if since is None or since == "":
        return None
    if not is_position(since):
        raise ValueError("since is not a notification's position")
    return str(since)


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def identify(secret: str, token: str | None) -> BrowserIdentity:
    """The (app, user) a token speaks for; `InvalidToken` when missing, bad or expired."""
    return read_token(secret, token).identity


def read_token(secret: str, token: str | None) -> BrowserToken:
    """The (app, user) a token speaks for and its expiry; `InvalidToken` as for `identify`."""
    if token is not None and len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("token too long")
    return read_browser_token(secret, token)
