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


def create_app_with_key(session: Session, name: str) -> NewApp:
    """Insert an app with a new random key (the caller commits)."""
    if not name.strip():
        raise ValueError("an app needs a name")
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    app = App(
        id=new_id("app"),
        name=name.strip(),
        api_key_hash=hash_api_key(api_key),
        api_key_prefix=api_key[:10],
    )
    session.add(app)
    session.flush()
    return NewApp(app_id=app.id, api_key=api_key)


def app_for_key(session: Session, api_key: str) -> str | None:
    """The id of the app that owns `api_key`, if any."""
    return session.scalar(select(App.id).where(App.api_key_hash == hash_api_key(api_key)))


class ApiKeyCache:
    """Remembers which app a key belongs to for a short while, sparing the store a query per
    request. A deleted app's key keeps working for at most `ttl_seconds`."""

    def __init__(self, ttl_seconds: float = 30.0, max_entries: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def app_for_key(self, session_factory: SessionFactory, api_key: str) -> str | None:
        digest = hash_api_key(api_key)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        with session_factory() as session:
            app_id = app_for_key(session, api_key)
        if app_id is not None:
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
                self._entries[digest] = (app_id, now + self.ttl_seconds)
        return app_id
