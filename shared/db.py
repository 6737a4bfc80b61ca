"""Engine and session factory of the store: SQLite (WAL, busy timeout) or PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

OUTBOX_CHANNEL = "omnipush_outbox"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite files get WAL mode, a busy timeout and their folder.

    Statement parameters are kept out of error messages and logs: they hold recipients'
    addresses and message bodies.
    """
    kwargs["hide_parameters"] = True
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it costs a round trip per transaction on the hot paths. A connection lost
    # with the server is invalidated on its first error and the batch is retried.
    return create_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def is_postgresql(engine: Engine) -> bool:
    """Whether the store is PostgreSQL (LISTEN/NOTIFY, SKIP LOCKED and JSONB are there)."""
    return engine.dialect.name == "postgresql"


def insert_for(dialect_name: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT with the dialect's `on_conflict_do_nothing` / `on_conflict_do_update`.

    Only PostgreSQL and SQLite are supported stores; both spell upserts this way.
    """
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
