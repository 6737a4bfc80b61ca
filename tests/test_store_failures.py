"""When a request fails inside: a batch is stored whole or not at all, and the caller gets a
problem+json 5xx that tells nothing of the internals.

The failure is made deterministic with a trigger, in a store of the test's own, that refuses
one row of a batch (the message titled "poison"); the rows before it have been written by then.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text

from producer_api.api_keys import NewApp
from producer_api.app import create_app
from shared.migrate import upgrade
from shared.models import Event, Message, OutboxEntry
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import bearer, isolated_settings, new_tenant
from tests.test_api import assert_problem
from tests.test_batch import count, message

POISON = "poison"
# PostgreSQL stores a batch in one statement, messages first: the trigger fires on a message
# row in its middle.
PG_TRIGGER = [
    f"""
    CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.content->>'title' = '{POISON}' THEN RAISE EXCEPTION 'poisoned row'; END IF;
      RETURN NEW;
    END $$
    """,
    "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages "
    "FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
]
# SQLite stores it in three statements (messages, outbox rows, events): the trigger fires on the
# last, once every message and outbox row of the batch is written.
SQLITE_TRIGGER = [
    f"""
    CREATE TRIGGER refuse_poison BEFORE INSERT ON events
    WHEN (SELECT json_extract(content, '$.title') FROM messages WHERE id = NEW.message_id)
         = '{POISON}'
    BEGIN SELECT RAISE(ABORT, 'poisoned row'); END
    """
]


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def poisoned(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Runtime, Any]]:
    """A runtime on a store of its own that refuses the poison message, and its API."""
    with isolated_settings() as settings:
        if request.param == "sqlite":
            folder = tmp_path_factory.mktemp("poisoned")
            settings = settings.with_overrides(database_url=f"sqlite:///{folder}/store.db")
            upgrade(settings.database_url)
        runtime = Runtime.build(settings)
        try:
            with runtime.engine.begin() as connection:
                for statement in PG_TRIGGER if request.param == "postgresql" else SQLITE_TRIGGER:
                    connection.execute(text(statement))
            yield runtime, create_app(settings, runtime=runtime)
        finally:
            runtime.close()


def _assert_opaque_5xx(response: Any) -> None:
    """A problem+json server error that names no exception, statement or stack."""
    assert 500 <= response.status_code < 600, response.get_data(as_text=True)
    assert_problem(response, response.status_code)
    body = response.get_data(as_text=True)
    for leak in ("Traceback", "poisoned", "INSERT", "psycopg2", "sqlite3", 'File "'):
        assert leak not in body, body


def test_a_batch_whose_store_write_fails_part_way_stores_none_of_it(
    poisoned: tuple[Runtime, Any],
) -> None:
    runtime, app = poisoned
    tenant = new_tenant(runtime)
    items = [message("one"), message("two"), message(POISON), message("four")]
    with app.test_client() as client:
        failed = client.post("/v1/messages/batch", json={"messages": items}, headers=bearer(tenant))
        _assert_opaque_5xx(failed)
        for model in (Message, OutboxEntry, Event):
            assert count(runtime, model, tenant.app_id) == 0, model
        # The store is fine for everything else: the same batch without the poison is stored.
        items.pop(2)
        stored = client.post("/v1/messages/batch", json={"messages": items}, headers=bearer(tenant))
        assert stored.get_json()["accepted"] == 3
    assert count(runtime, OutboxEntry, tenant.app_id) == 3


def test_an_unexpected_error_in_a_view_is_a_problem_without_a_traceback(
    settings: Settings, runtime: Runtime, tenant: NewApp
) -> None:
    app = create_app(settings, runtime=runtime)

    def broken() -> str:
        raise RuntimeError("internal detail that must not leak")

    app.add_url_rule("/v1/broken", view_func=broken)
    app.add_url_rule("/broken", view_func=broken, endpoint="broken_outside_v1")
    client: FlaskClient = app.test_client()
    for response in (client.get("/v1/broken", headers=bearer(tenant)), client.get("/broken")):
        _assert_opaque_5xx(response)
        assert response.status_code == 500
        assert "internal detail" not in response.get_data(as_text=True)
