"""API keys in-process: bad keys are remembered and limited per address; old stores migrate."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from producer_api.api_keys import (
    NewApp,
    app_for_key,
    create_key,
    hash_api_key,
    list_keys,
    revoke_key,
)
from producer_api.app import create_app
from producer_api.auth_failures import FAILURES_PER_WINDOW
from shared.db import make_engine
from shared.migrate import alembic_config, upgrade
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import bearer, new_tenant, postgres_database
from tests.test_api import assert_problem

PLAIN = {"to": [{"user_id": "alice"}], "channels": ["web"], "content": {"title": "Hi"}}


def _address() -> str:
    """A client address of its own, so that no other test's bad keys count against it."""
    return f"2001:db8::{uuid.uuid4().hex[:4]}"


def _bad_key() -> dict[str, str]:
    return {"Authorization": f"Bearer op_bad-{uuid.uuid4().hex}"}


class KeyLookups:
    """Counts the statements an engine sends that look a key up in `api_keys`."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "api_keys.key_hash" in statement:
            self.count += 1


@pytest.fixture
def own_app(settings: Settings) -> Iterator[tuple[Flask, KeyLookups]]:
    """An API with an engine of its own, whose key look-ups are counted."""
    runtime = Runtime.build(settings)
    lookups = KeyLookups(runtime.engine)
    yield create_app(settings, runtime=runtime), lookups
    runtime.close()


def _client(app: Flask, address: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def test_a_bad_key_is_looked_up_once_then_remembered(
    own_app: tuple[Flask, KeyLookups], tenant: NewApp
) -> None:
    app, lookups = own_app
    bad = _bad_key()
    for _ in range(5):
        assert_problem(_client(app, _address()).get("/v1/messages", headers=bad), 401)
    assert lookups.count == 1
    for _ in range(5):
        assert (
            _client(app, _address()).get("/v1/messages", headers=bearer(tenant)).status_code == 200
        )
    assert lookups.count == 2


def test_too_many_bad_keys_from_one_address_are_429_without_asking_the_store(
    own_app: tuple[Flask, KeyLookups], tenant: NewApp
) -> None:
    app, lookups = own_app
    address = _address()
    client = _client(app, address)
    assert client.get("/v1/messages", headers=bearer(tenant)).status_code == 200
    for _ in range(FAILURES_PER_WINDOW):
        assert_problem(client.get("/v1/messages", headers=_bad_key()), 401)
    before = lookups.count
    for _ in range(3):
        refused = client.get("/v1/messages", headers=_bad_key())
        problem = assert_problem(refused, 429)
        assert "bad API key" in problem["detail"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert lookups.count == before
    # A key this API already knows to be good still works from there; other addresses are
    # not held back.
    assert client.get("/v1/messages", headers=bearer(tenant)).status_code == 200
    assert_problem(_client(app, _address()).get("/v1/messages", headers=_bad_key()), 401)


def test_every_api_process_counts_an_address_s_bad_keys_together(
    settings: Settings, runtime: Runtime
) -> None:
    address = _address()
    one = create_app(settings, runtime=runtime)
    other_runtime = Runtime.build(settings)
    try:
        other = create_app(settings, runtime=other_runtime)
        for _ in range(FAILURES_PER_WINDOW):
            assert_problem(_client(one, address).get("/v1/users", headers=_bad_key()), 401)
        assert_problem(_client(other, address).get("/v1/users", headers=_bad_key()), 429)
    finally:
        other_runtime.close()


def test_bad_keys_on_the_accept_path_are_counted_once_each(
    client: FlaskClient, api_app: Flask
) -> None:
    # A plain message is first offered to the fast accept path, then to the Flask app: a bad
    # key there is one failure, not two.
    sender = _client(api_app, _address())
    for _ in range(FAILURES_PER_WINDOW):
        assert_problem(sender.post("/v1/messages", json=PLAIN, headers=_bad_key()), 401)
    assert_problem(sender.post("/v1/messages", json=PLAIN, headers=_bad_key()), 429)


def test_without_redis_bad_keys_are_still_401_not_refused(settings: Settings) -> None:
    no_redis = settings.with_overrides(redis_url="redis://127.0.0.1:1/0")
    runtime = Runtime.build(no_redis)
    try:
        client = _client(create_app(no_redis, runtime=runtime), _address())
        for _ in range(FAILURES_PER_WINDOW + 5):
            assert_problem(client.get("/v1/users", headers=_bad_key()), 401)
    finally:
        runtime.close()


OLD_KEY = "op_a-key-from-before-key-rows"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at_0006(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store at the revision before keys had a table, with an app and one of its users."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/old.db"
        upgrade(url, "0006")
        yield from _with_old_app(url)
    else:
        with postgres_database() as url:
            command.downgrade(alembic_config(url), "0006")
            yield from _with_old_app(url)


def _with_old_app(url: str) -> Iterator[str]:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO apps (id, name, api_key_hash, api_key_prefix, created_at) "
                "VALUES ('app_old', 'old', :hash, :prefix, CURRENT_TIMESTAMP)"
            ),
            {"hash": hash_api_key(OLD_KEY), "prefix": OLD_KEY[:10]},
        )
        connection.execute(
            sa.text(
                "INSERT INTO users (app_id, user_id, preferences, created_at, updated_at) "
                "VALUES ('app_old', 'kept', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()
    yield url


def test_an_existing_app_s_key_still_works_after_the_upgrade(store_at_0006: str) -> None:
    upgrade(store_at_0006)
    engine = make_engine(store_at_0006)
    try:
        with Session(engine) as session:
            assert app_for_key(session, OLD_KEY) == "app_old"
            keys = list_keys(session, "app_old")
        assert keys is not None and [(k.prefix, k.revoked_at) for k in keys] == [
            (OLD_KEY[:10], None)
        ]
        with engine.connect() as connection:
            users = connection.execute(sa.text("SELECT user_id FROM users")).scalars().all()
        # Rebuilding the apps table (SQLite) must not take the rows that refer to it along.
        assert users == ["kept"]
    finally:
        engine.dispose()


def test_a_revoked_key_is_refused(client: FlaskClient, runtime: Runtime) -> None:
    tenant = new_tenant(runtime)
    with runtime.sessions() as session, session.begin():
        second = create_key(session, tenant.app_id)
        assert second is not None
        revoke_key(session, second.key_id)
    with runtime.sessions() as session:
        keys = list_keys(session, tenant.app_id)
    assert keys is not None and [k.revoked_at is not None for k in keys] == [False, True]
    refused = client.get("/v1/users", headers={"Authorization": f"Bearer {second.api_key}"})
    assert_problem(refused, 401)
    assert client.get("/v1/users", headers=bearer(tenant)).status_code == 200
