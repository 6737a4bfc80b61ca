"""Settings read from the environment: what is refused, with one line naming the setting, and
what is accepted as hosts hand it out."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import create_engine, inspect

from shared.db import StoreUrlError, store_url
from shared.settings import Settings
from tests.conftest import PG_ADMIN_DSN
from tests.stack import run_omnipush

GOOD_KEY = secrets.token_urlsafe(48)


def clean_env(**overrides: str) -> dict[str, str]:
    """The process environment without any OMNIPUSH_ setting, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIPUSH_")}
    return env | overrides


def assert_one_line_error(result: object, *words: str) -> None:
    returncode, stdout, stderr = (getattr(result, a) for a in ("returncode", "stdout", "stderr"))
    assert returncode != 0, stdout
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for word in words:
        assert word in lines[0], lines[0]


# --- the database URL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u:p@db:5432/omnipush", "postgresql+psycopg2://u:p@db:5432/omnipush"),
        ("postgres://u:p@db/omnipush", "postgresql+psycopg2://u:p@db/omnipush"),
        ("postgres+psycopg2://u@db/o", "postgresql+psycopg2://u@db/o"),
        ("postgresql+psycopg2://u:p%40x@db/o", "postgresql+psycopg2://u:p%40x@db/o"),
        ("sqlite:///var/omnipush.db", "sqlite:///var/omnipush.db"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_database_urls_get_the_installed_driver(given: str, used: str) -> None:
    assert store_url(given) == used
    settings = Settings.from_env({"OMNIPUSH_SECRET_KEY": GOOD_KEY, "OMNIPUSH_DATABASE_URL": given})
    assert settings.database_url == used


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mysql://u:pw@db/o", ("mysql://", "'MySQLdb'", "not installed")),
        ("postgresql+asyncpg://u:pw@db/o", ("postgresql+asyncpg://", "'asyncpg'")),
        ("oracle+nosuchdriver://u:pw@db/o", ("oracle+nosuchdriver://", "not a database")),
        ("not a url at all pw", ("not a database URL",)),
    ],
)
def test_a_database_url_omnipush_cannot_open_is_one_line(url: str, words: tuple[str]) -> None:
    with pytest.raises(StoreUrlError) as raised:
        store_url(url)
    message = str(raised.value)
    assert message.startswith("OMNIPUSH_DATABASE_URL")
    assert "\n" not in message
    assert "pw" not in message  # a password in the URL is not repeated
    for word in words:
        assert word in message


@pytest.fixture
def empty_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database, as a host hands it out: `postgresql://...`."""
    name = f"omnipush_test_{uuid.uuid4().hex[:10]}"
    connection = psycopg2.connect(PG_ADMIN_DSN)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.close()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_db_upgrade_and_apps_create_take_the_url_a_host_hands_out(
    scheme: str, empty_postgres_database: str, tmp_path: Path
) -> None:
    env = clean_env(
        OMNIPUSH_SECRET_KEY=GOOD_KEY,
        OMNIPUSH_DATABASE_URL=f"{scheme}://postgres@127.0.0.1:5432/{empty_postgres_database}",
    )
    upgraded = run_omnipush("db", "upgrade", env=env, cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    created = run_omnipush("apps", "create", "host-url", env=env, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    engine = create_engine(
        f"postgresql+psycopg2://postgres@127.0.0.1:5432/{empty_postgres_database}"
    )
    try:
        assert "messages" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "module"),
    [("mysql://u:pw@127.0.0.1/o", "MySQLdb"), ("postgresql+asyncpg://u:pw@127.0.0.1/o", "asyncpg")],
)
@pytest.mark.parametrize("command", [("db", "upgrade"), ("serve", "api"), ("serve", "relay")])
def test_a_missing_driver_stops_every_command_with_one_line(
    url: str, module: str, command: tuple[str, ...], tmp_path: Path
) -> None:
    env = clean_env(OMNIPUSH_SECRET_KEY=GOOD_KEY, OMNIPUSH_DATABASE_URL=url)
    result = run_omnipush(*command, env=env, cwd=tmp_path)
    assert_one_line_error(result, "OMNIPUSH_DATABASE_URL", f"'{module}'", "not installed")
