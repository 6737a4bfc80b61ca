"""Engine and session factory of the store: SQLite (WAL, busy timeout) or PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

OUTBOX_CHANNEL = "omnipush_outbox"

#: The stores omnipush runs on (`insert_for` and the migrations know only these).
SUPPORTED_BACKENDS = ("sqlite", "postgresql")
#: The driver omnipush installs for a backend, used when a URL names none: `postgresql://`, the
#: form hosts hand out, would otherwise mean SQLAlchemy's own default driver, which is not here.
BUNDLED_DRIVERS = {"postgresql": "psycopg2"}
#: Other spellings of a backend, as in Heroku-style `postgres://` URLs.
BACKEND_ALIASES = {"postgres": "postgresql"}


class StoreUrlError(RuntimeError):
    """`OMNIPUSH_DATABASE_URL` names a store omnipush cannot open; the message is one line."""


def store_url(url: str) -> str:
    """`url` with the installed driver filled in, or `StoreUrlError` saying what is wrong.

    Every engine and the migrations take their URL through here, so `postgres://` and
    `postgresql://` mean psycopg2 everywhere, and a driver that is not installed is a clear
    error when settings are read rather than a traceback from the first connection.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        # The URL itself is not echoed: it may hold a password.
        raise StoreUrlError(
            "OMNIPUSH_DATABASE_URL is not a database URL "
            "(expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
        ) from None
    parsed = _with_bundled_driver(parsed)
    scheme = parsed.drivername
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise StoreUrlError(
            f"OMNIPUSH_DATABASE_URL: {scheme}:// is not a database and driver SQLAlchemy knows "
            f"(omnipush stores in {' or '.join(SUPPORTED_BACKENDS)})"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as error:
        raise StoreUrlError(
            f"OMNIPUSH_DATABASE_URL: {scheme}:// needs the Python module "
            f"{error.name or str(error)!r}, which is not installed "
            f"(use sqlite:/// or postgresql://, whose drivers come with omnipush)"
        ) from None
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS or dialect.is_async:
        raise StoreUrlError(
            f"OMNIPUSH_DATABASE_URL: omnipush stores in SQLite or PostgreSQL through a "
            f"synchronous driver, not {scheme}://"
        )
    return parsed.render_as_string(hide_password=False)


def _with_bundled_driver(parsed: URL) -> URL:
    backend, _, driver = parsed.drivername.partition("+")
    backend = BACKEND_ALIASES.get(backend, backend)
    driver = driver or BUNDLED_DRIVERS.get(backend, "")
    return parsed.set(drivername=f"{backend}+{driver}" if driver else backend)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite files get WAL mode, a busy timeout and their folder.

    Statement parameters are kept out of error messages and logs: they hold recipients'
    addresses and message bodies.
    """
    url = store_url(url)
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
    if parsed.get_driver_name() == "psycopg2":
        # An UPDATE run for many rows (a batch's receipts) goes in pages of 100 statements a
        # round trip (psycopg2's execute_batch) instead of one round trip per row.
        kwargs.setdefault("executemany_mode", "values_plus_batch")
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
