"""Apps and their API keys: each key created once, shown once, stored as a SHA-256 hash.

An app may hold several keys, so that one can be rotated (create the new one, move the
callers, revoke the old one) without a moment with none. A revoked key is refused; its row stays
so that its id still says what it was.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.ids import new_id, utcnow
from shared.models import ApiKey, App
from shared.store_retry import retry_once_on_disconnect

KEY_PREFIX = "op_"
#: How many of a key's first characters are kept in the clear, to tell keys apart by.
SHOWN_PREFIX = 10
SessionFactory = sessionmaker[Session]

#: How long a process trusts what the store said about a valid key: a revoked key, or a new
#: rate limit, reaches every running API within this (every key is looked up again after it).
KNOWN_KEY_SECONDS = 3.0
#: How long a process remembers that a key is not valid, so that a flood of requests with a bad
#: key does not reach the store.
UNKNOWN_KEY_SECONDS = 60.0


@dataclass(frozen=True)
class NewApp:
    """A freshly created app and the only copy of its API key."""

    app_id: str
    api_key: str


@dataclass(frozen=True)
class NewKey:
    """A freshly created API key: its public id and the only copy of the key itself."""

    key_id: str
    app_id: str
    api_key: str


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown of an API key: never the key itself."""

    key_id: str
    app_id: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class AppInfo:
    """An app as an operator lists it, with how many of its keys still work."""

    app_id: str
    name: str
    created_at: datetime
    active_keys: int
    rate_limit: float | None
    rate_burst: int | None


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyOwner:
    """The app an API key belongs to, with its own rate and fan-out limits where it has them
    (None: the defaults)."""

    app_id: str
    rate_limit: float | None = None
    rate_burst: int | None = None
    max_recipients_per_request: int | None = None
    max_recipients_per_minute: int | None = None
    max_topic_subscribers: int | None = None


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
    """Insert an app with its first key (the caller commits)."""
    if not name.strip():
        raise ValueError("an app needs a name")
    check_limit(rate_limit, rate_burst)
    app = App(id=new_id("app"), name=name.strip(), rate_limit=rate_limit, rate_burst=rate_burst)
    session.add(app)
    session.flush()
    return NewApp(app_id=app.id, api_key=_add_key(session, app.id).api_key)


def create_key(session: Session, app_id: str) -> NewKey | None:
    """Give an app another key (the caller commits); None when there is no such app."""
    if session.get(App, app_id) is None:
        return None
    return _add_key(session, app_id)


def _add_key(session: Session, app_id: str) -> NewKey:
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id("key"),
        app_id=app_id,
        key_hash=hash_api_key(api_key),
        prefix=api_key[:SHOWN_PREFIX],
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return NewKey(key_id=key.id, app_id=app_id, api_key=api_key)


def _info(key: ApiKey) -> KeyInfo:
    return KeyInfo(key.id, key.app_id, key.prefix, key.created_at, key.revoked_at)


def list_keys(session: Session, app_id: str) -> list[KeyInfo] | None:
    """An app's keys, oldest first, revoked ones included; None when there is no such app."""
    if session.get(App, app_id) is None:
        return None
    keys = session.scalars(
        select(ApiKey).where(ApiKey.app_id == app_id).order_by(ApiKey.created_at, ApiKey.id)
    )
    return [_info(key) for key in keys]


def revoke_key(session: Session, key_id: str) -> KeyInfo | None:
    """Revoke a key from now on (the caller commits); a key revoked before keeps its time.
    None when there is no such key."""
    key = session.get(ApiKey, key_id, with_for_update=True)
    if key is None:
        return None
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return _info(key)


def list_apps(session: Session) -> list[AppInfo]:
    """Every app, oldest first."""
    active = (
        select(func.count())
        .where(ApiKey.app_id == App.id, ApiKey.revoked_at.is_(None))
        .scalar_subquery()
    )
    rows = session.execute(
        select(App.id, App.name, App.created_at, active, App.rate_limit, App.rate_burst).order_by(
            App.created_at, App.id
        )
    )
    return [AppInfo(*row) for row in rows]


def app_exists(session: Session, app_id: str) -> bool:
    return session.get(App, app_id) is not None


def app_for_key(session: Session, api_key: str) -> str | None:
    """The id of the app that owns `api_key`, if any."""
    owner = key_owner(session, api_key)
    return owner.app_id if owner is not None else None


def key_owner(session: Session, api_key: str) -> KeyOwner | None:
    """The app that owns `api_key` and its limits, unless there is no such key or it is
    revoked."""
    return _owner_of(session, hash_api_key(api_key))


def _owner_of(session: Session, digest: str) -> KeyOwner | None:
    row = session.execute(
        select(
            App.id,
            App.rate_limit,
            App.rate_burst,
            App.max_recipients_per_request,
            App.max_recipients_per_minute,
            App.max_topic_subscribers,
        )
        .join(ApiKey, ApiKey.app_id == App.id)
        .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
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


@dataclass(frozen=True)
class Known:
    """What a process remembers of a key: its owner, or None for a key that is not valid."""

    owner: KeyOwner | None


class _Memory:
    """Answers remembered until a deadline, at most `max_entries` of them (when full, it
    forgets everything rather than track which is oldest: it is only a cache)."""

    def __init__(self, ttl_seconds: float, max_entries: int) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Known, float]] = {}

    def get(self, digest: str, now: float) -> Known | None:
        hit = self._entries.get(digest)
        return hit[0] if hit is not None and hit[1] > now else None

    def put(self, digest: str, known: Known, now: float) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[digest] = (known, now + self.ttl_seconds)


class ApiKeyCache:
    """Remembers what the store said about a key, sparing it a query per request.

    Valid keys are remembered for `ttl_seconds` (a revoked key, a deleted app or a changed limit
    takes effect within that), keys that are not valid for `unknown_ttl_seconds`. The two are
    kept apart so that a flood of bad keys cannot push the good ones out.
    """

    def __init__(
        self,
        ttl_seconds: float = KNOWN_KEY_SECONDS,
        unknown_ttl_seconds: float = UNKNOWN_KEY_SECONDS,
        max_entries: int = 10_000,
    ) -> None:
        self._valid = _Memory(ttl_seconds, max_entries)
        self._invalid = _Memory(unknown_ttl_seconds, max_entries)
        self._lock = threading.Lock()

    def recall(self, digest: str) -> Known | None:
        """What is remembered of the key with this hash, or None if nothing (ask `look_up`)."""
        now = time.monotonic()
        with self._lock:
            return self._valid.get(digest, now) or self._invalid.get(digest, now)

    def look_up(self, session_factory: SessionFactory, digest: str) -> KeyOwner | None:
        """Ask the store who owns the key with this hash, and remember the answer."""

        def read() -> KeyOwner | None:
            with session_factory() as session:
                return _owner_of(session, digest)

        owner = retry_once_on_disconnect(read)
        now = time.monotonic()
        with self._lock:
            (self._valid if owner is not None else self._invalid).put(digest, Known(owner), now)
        return owner
