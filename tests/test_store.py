"""The store on both SQLite and PostgreSQL: migrations, WAL, timezone-aware timestamps."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from producer_api.api_keys import app_for_key, create_app_with_key
from shared.db import make_engine, make_session_factory
from shared.migrate import upgrade
from shared.models import Message
from tests.conftest import postgres_database

TABLES = {"apps", "users", "messages", "deliveries", "events", "outbox"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/nested/omnipush.db"
        upgrade(url)
        yield url
    else:
        with postgres_database() as url:
            yield url


def test_migrations_create_every_table(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        upgrade(database_url)  # a second upgrade is a no-op
    finally:
        engine.dispose()


def test_timestamps_round_trip_as_utc_and_keys_resolve(database_url: str) -> None:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    try:
        with sessions() as session, session.begin():
            created = create_app_with_key(session, "store-test")
            session.add(
                Message(
                    id="msg_store",
                    app_id=created.app_id,
                    status="accepted",
                    recipients=[{"user_id": "a"}],
                    channels=["web"],
                    content={"title": "t"},
                    created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                )
            )
        with sessions() as session:
            stored = session.get(Message, "msg_store")
            assert stored is not None
            assert stored.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
            assert stored.created_at.tzinfo is not None
            assert stored.content == {"title": "t"}
            assert app_for_key(session, created.api_key) == created.app_id
            assert app_for_key(session, created.api_key + "x") is None
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/wal.db")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30000
    finally:
        engine.dispose()
