"""POST /v1/messages/batch: up to 500 messages in one transaction, a result for each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from producer_api.api_keys import NewApp
from producer_api.app import create_app
from shared.migrate import upgrade
from shared.models import Event, Message, OutboxEntry
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import bearer as auth
from tests.conftest import new_tenant
from tests.test_api import assert_problem


def message(title: str, **changes: Any) -> dict[str, Any]:
    return {"to": [{"user_id": "u"}], "channels": ["web"], "content": {"title": title}, **changes}


def count(runtime: Runtime, model: Any, app_id: str) -> int:
    with runtime.engine.connect() as connection:
        query = select(func.count()).select_from(model)
        if model is Message:
            query = query.where(Message.app_id == app_id)
        else:
            query = query.join(Message, Message.id == model.message_id).where(
                Message.app_id == app_id
            )
        return int(connection.scalar(query) or 0)


def test_every_item_gets_a_result_in_order_and_the_good_ones_are_stored(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    items = [
        message("one"),
        message("bad", channels=["carrier-pigeon"]),
        message("later", send_at="2099-01-01T00:00:00+00:00"),
        message("topicless", to=[{"topic": "nobody-made-this"}]),
        message("two"),
    ]
    response = client.post("/v1/messages/batch", json={"messages": items}, headers=auth(tenant))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["accepted"], body["rejected"]) == (2, 3)
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in results] == [
        "accepted",
        "rejected",
        "rejected",  # 2099 is more than 30 days ahead
        "rejected",
        "accepted",
    ]
    assert "channels.0" in results[1]["error"]["errors"]
    assert "send_at" in results[2]["error"]["errors"]
    assert "to.0.topic" in results[3]["error"]["errors"]
    assert all(r["error"]["status"] == 422 for r in results if r["status"] == "rejected")
    ids = [r["id"] for r in results if r["status"] == "accepted"]
    assert len(set(ids)) == 2
    for model in (Message, OutboxEntry, Event):
        assert count(runtime, model, tenant.app_id) == 2
    shown = client.get(f"/v1/messages/{ids[0]}", headers=auth(tenant)).get_json()
    assert shown["content"]["title"] == "one"


def test_five_hundred_messages_are_accepted_in_one_request(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    items = [message(f"n{n}") for n in range(500)]
    response = client.post("/v1/messages/batch", json={"messages": items}, headers=auth(tenant))
    assert response.status_code == 200
    assert response.get_json()["accepted"] == 500
    assert count(runtime, OutboxEntry, tenant.app_id) == 500


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [message("x")] * 501}, "messages"),
        ({"messages": "all of them"}, "messages"),
        ({"messages": ["not an object"]}, "messages.0"),
        ({}, "messages"),
        ({"messages": [message("x")], "extra": 1}, "extra"),
    ],
)
def test_a_batch_that_is_not_a_list_of_up_to_500_is_422(
    client: FlaskClient, tenant: NewApp, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(
        client.post("/v1/messages/batch", json=body, headers=auth(tenant)), 422
    )
    assert field in problem["errors"], problem["errors"]


def test_a_batch_may_be_larger_than_a_single_message_body(
    client: FlaskClient, tenant: NewApp
) -> None:
    items = [message("x", content={"title": "x", "body": "b" * 3000}) for _ in range(200)]
    assert len(json.dumps({"messages": items})) > 256 * 1024
    response = client.post("/v1/messages/batch", json={"messages": items}, headers=auth(tenant))
    assert response.status_code == 200 and response.get_json()["accepted"] == 200
    huge = {"messages": [message("x", content={"title": "x", "body": "b" * 4000})] * 1100}
    assert_problem(client.post("/v1/messages/batch", json=huge, headers=auth(tenant)), 413)


def test_a_batch_is_stored_on_sqlite_too(settings: Settings, tmp_path: Path) -> None:
    sqlite = settings.with_overrides(database_url=f"sqlite:///{tmp_path}/omnipush.db")
    upgrade(sqlite.database_url)
    runtime = Runtime.build(sqlite)
    try:
        tenant = new_tenant(runtime)
        with create_app(sqlite, runtime=runtime).test_client() as client:
            response = client.post(
                "/v1/messages/batch",
                json={"messages": [message("a"), message("b", send_at="2020-01-01T00:00:00Z")]},
                headers=auth(tenant),
            )
            assert response.get_json()["accepted"] == 2, response.get_json()
            for result in response.get_json()["results"]:
                shown = client.get(f"/v1/messages/{result['id']}", headers=auth(tenant))
                assert [e["stage"] for e in shown.get_json()["events"]] == ["accepted"]
        assert count(runtime, OutboxEntry, tenant.app_id) == 2
    finally:
        runtime.close()
