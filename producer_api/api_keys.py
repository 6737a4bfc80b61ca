"""Apps and their API keys: created once, shown once, stored as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.ids import new_id
from shared.models import App

KEY_PREFIX = "op_"
SessionFactory = sessionmaker[Session]


@dataclass(frozen=True)
class NewApp:
    """A freshly created app and the only copy of its API key."""

    app_id: str
    api_key: str


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyOwner:
    """The app an API key belongs to, with its own rate limit if it has one."""

    app_id: str
    rate_limit: float | None = None
    rate_burst: int | None = None


def check_limit(rate_limit: float | None, rate_burst: int | None) -> None:
    """ValueError unless the rate (requests/s) and burst are positive when given."""
    if rate_limit is not None and not rate_limit > 0:
        raise ValueError("a rate limit must be a positive number of requests per second")
    if rate_burst is not None and rate_burst < 1:
        raise ValueError("a burst must be at least 1 request")


def create_app_with_key(
    session: Session,
    name: str,
    rate_limit: float | None = None,
    rate_burst: int | None = None,
) -> NewApp:
    """Insert an app with a new random key (the caller commits)."""
    if not name.strip():
        raise ValueError("an app needs a name")
    check_limit(rate_limit, rate_burst)
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    app = App(
        id=new_id("app"),
        name=name.strip(),
        api_key_hash=hash_api_key(api_key),
        api_key_prefix=api_key[:10],
        rate_limit=rate_limit,
        rate_burst=rate_burst,
    )
    session.add(app)
    session.flush()
    return NewApp(app_id=app.id, api_key=api_key)


def app_for_key(session: Session, api_key: str) -> str | None:
    """The id of the app that owns `api_key`, if any."""
    owner = key_owner(session, api_key)
    return owner.app_id if owner is not None else None


def key_owner(session: Session, api_key: str) -> KeyOwner | None:
    """The app that owns `api_key` and its limits, if any."""
    row = session.execute(
        select(App.id, App.rate_limit, App.rate_burst).where(
            App.api_key_hash == hash_api_key(api_key)
        )
    ).first()
    return KeyOwner(*row) if row is not None else None


def set_limit(
    session: Session, app_id: str, rate_limit: float | None, rate_burst: int | None
) -> bool:
    """Give an app its own rate limit (None: the defaults); False when there is no such app."""
    check_limit(rate_limit, rate_burst)
    app = session.get(App, app_id)
    if app is None:
        return False
    app.rate_limit = rate_limit
    app.rate_burst = rate_burst
    return True


class ApiKeyCache:
    """Remembers which app a key belongs to for a short while, sparing the store a query per
    request. A deleted app's key keeps working, and a changed limit keeps its old value, for at
    most `ttl_seconds`."""

    def __init__(self, ttl_seconds: float = 30.0, max_entries: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[KeyOwner, float]] = {}
        self._lock = threading.Lock()

    def owner(self, session_factory: SessionFactory, api_key: str) -> KeyOwner | None:
        digest = hash_api_key(api_key)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        with session_factory() as session:
            owner = key_owner(session, api_key)
        if owner is not None:
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
                self._entries[digest] = (owner, now + self.ttl_seconds)
        return owner
