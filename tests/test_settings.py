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
BAD_KEYS = [
    "change-me-in-production",  # the value docker-compose.yml used to default to
    "changeme",
    "secret",
    "s",
    "x" * 31,  # one byte short
    "a" * 64,  # long, but not random
    "please-change-me-to-something-long-and-random",
    "my-super-secret-key-for-production-use-only",
]


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


# --- the secret key --------------------------------------------------------------------------


@pytest.mark.parametrize("environment", ["development", "production"])
@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_short_or_placeholder_secret_key_is_refused_in_every_environment(
    key: str, environment: str
) -> None:
    with pytest.raises(RuntimeError, match="OMNIPUSH_SECRET_KEY must be at least 32 bytes"):
        Settings.from_env({"OMNIPUSH_SECRET_KEY": key, "OMNIPUSH_ENV": environment})


@pytest.mark.parametrize(
    "key", [GOOD_KEY, secrets.token_hex(16), "test-secret-" + uuid.uuid4().hex]
)
def test_a_random_secret_key_of_32_bytes_is_accepted(key: str) -> None:
    assert Settings.from_env({"OMNIPUSH_SECRET_KEY": key}).secret_key == key


def test_without_a_key_development_generates_one_that_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = Settings.from_env({}).secret_key
    assert len(first.encode()) >= 32
    assert (tmp_path / "var" / "secret_key").read_text() == first
    assert Settings.from_env({}).secret_key == first


def test_a_short_generated_key_file_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "secret_key").write_text("hunter2")
    with pytest.raises(RuntimeError, match=r"OMNIPUSH_SECRET_KEY \(unset, so read from var"):
        Settings.from_env({})


@pytest.mark.parametrize(
    "command",
    [("serve", "api"), ("serve", "gateway"), ("token", "app", "alice"), ("db", "upgrade")],
)
def test_every_command_refuses_a_placeholder_key_with_one_line(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    env = clean_env(
        OMNIPUSH_SECRET_KEY="change-me-in-production",
        OMNIPUSH_DATABASE_URL=f"sqlite:///{tmp_path}/omnipush.db",
    )
    result = run_omnipush(*command, env=env, cwd=tmp_path)
    assert_one_line_error(result, "OMNIPUSH_SECRET_KEY", "32 bytes")
    assert "change-me-in-production" not in result.stderr


# --- the log format --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"), [("console", "console"), ("json", "json"), ("JSON", "json"), ("", None)]
)
def test_the_log_format_is_read_from_the_environment(raw: str, expected: str | None) -> None:
    env = {"OMNIPUSH_SECRET_KEY": GOOD_KEY, "OMNIPUSH_LOG_FORMAT": raw}
    assert Settings.from_env(env).log_format == expected


def test_an_unknown_log_format_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    env = clean_env(OMNIPUSH_SECRET_KEY=GOOD_KEY, OMNIPUSH_LOG_FORMAT="xml")
    result = run_omnipush("serve", "relay", env=env, cwd=tmp_path)
    assert_one_line_error(result, "OMNIPUSH_LOG_FORMAT", "console or json", "'xml'")


# --- who sends web deliveries -----------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [("", "dispatcher"), ("worker", "worker")])
def test_web_deliveries_are_sent_by_the_dispatcher_unless_the_worker_is_named(
    raw: str, expected: str
) -> None:
    env = {"OMNIPUSH_SECRET_KEY": GOOD_KEY, "OMNIPUSH_WEB_SENDS": raw}
    assert Settings.from_env(env).web_sends == expected


def test_an_unknown_web_sender_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    env = clean_env(OMNIPUSH_SECRET_KEY=GOOD_KEY, OMNIPUSH_WEB_SENDS="gateway")
    result = run_omnipush("serve", "dispatcher", env=env, cwd=tmp_path)
    assert_one_line_error(result, "OMNIPUSH_WEB_SENDS", "dispatcher, worker", "'gateway'")


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
