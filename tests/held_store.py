"""Holding the store's commits from a test: a table lock on a test's own PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text


@contextmanager
def messages_locked(database_url: str) -> Iterator[None]:
    """Hold `LOCK TABLE messages IN EXCLUSIVE MODE` until the block ends: every insert of a
    message waits for it, while reads go on."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(text("LOCK TABLE messages IN EXCLUSIVE MODE"))
            yield
    finally:
        engine.dispose()


def statements_waiting_for_a_lock(database_url: str) -> int:
    """How many statements on this database wait for a lock right now."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(
                connection.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
                or 0
            )
    finally:
        engine.dispose()
