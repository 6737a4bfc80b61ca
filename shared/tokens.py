"""Browser tokens: short-lived JWTs that name one (app, user), minted by the API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from shared.ids import utcnow

AUDIENCE = "omnipush-browser"
ALGORITHM = "HS256"


@dataclass(frozen=True)
class BrowserIdentity:
    """Who a valid browser token speaks for."""

    app_id: str
    user_id: str


@dataclass(frozen=True)
class BrowserToken:
    """A verified browser token: who it speaks for, and until when."""

    identity: BrowserIdentity
    expires_at: datetime

    def expired(self, now: datetime) -> bool:
        """Whether the token no longer holds at `now` (as PyJWT decides: `exp` is exclusive)."""
        return now >= self.expires_at


class InvalidToken(Exception):
    """The token is missing, malformed, expired or signed with another key."""


def mint_browser_token(
    secret: str, app_id: str, user_id: str, ttl_seconds: int
) -> tuple[str, datetime]:
    """A signed token for `user_id` of `app_id`, and when it expires."""
    now = utcnow().replace(microsecond=0)
    expires_at = now + timedelta(seconds=ttl_seconds)
    claims = {"sub": user_id, "app": app_id, "aud": AUDIENCE, "iat": now, "exp": expires_at}
    return jwt.encode(claims, secret, algorithm=ALGORITHM), expires_at


def verify_browser_token(secret: str, token: str | None) -> BrowserIdentity:
    """The identity in `token`, or `InvalidToken`."""
    return read_browser_token(secret, token).identity


def read_browser_token(secret: str, token: str | None) -> BrowserToken:
    """The identity in `token` and its expiry, or `InvalidToken`."""
    if not token:
        raise InvalidToken("no token")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["exp", "sub", "app", "aud"]},
        )
    except jwt.PyJWTError as error:
        raise InvalidToken(str(error)) from error
    app_id, user_id = claims.get("app"), claims.get("sub")
    if not isinstance(app_id, str) or not isinstance(user_id, str):
        raise InvalidToken("token names no app or user")
    return BrowserToken(
        identity=BrowserIdentity(app_id=app_id, user_id=user_id),
        # PyJWT has checked that `exp` is an integer (it reads it with int()).
        expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
    )
