"""The producer API in-process: durable acceptance, problem+json errors, apps walled off."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from producer_api.api_keys import NewApp
from producer_api.app import create_app
from shared.models import Message, OutboxEntry
from shared.runtime import Runtime
from shared.settings import Settings
from shared.tokens import verify_browser_token
from tests.conftest import bearer as auth
from tests.conftest import isolated_settings, new_tenant

GOOD = {"to": [{"user_id": "alice"}], "channels": ["web"], "content": {"title": "Hi"}}


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json(force=True)
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    return body


def test_accepted_means_the_message_and_its_outbox_row_are_committed(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    response = client.post("/v1/messages", json=GOOD, headers=auth(tenant))
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "accepted"
    assert response.headers["Location"] == f"/v1/messages/{body['id']}"
    with runtime.sessions() as session:
        stored = session.get(Message, body["id"])
        outbox = session.scalars(
            select(OutboxEntry).where(OutboxEntry.message_id == body["id"])
        ).all()
    assert stored is not None and stored.app_id == tenant.app_id
    assert [row.payload for row in outbox] == [{"message_id": body["id"], "app_id": tenant.app_id}]


def test_a_form_encoded_curl_body_is_read_as_json(client: FlaskClient, tenant: NewApp) -> None:
    response = client.post(
        "/v1/messages",
        data=json.dumps(GOOD),
        headers=auth(tenant),
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "Authorization: Bearer"),
        ({"Authorization": "Bearer op_not-a-key"}, "not valid"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Authorization: Bearer"),
    ],
)
def test_missing_or_wrong_api_keys_are_401(
    client: FlaskClient, headers: dict[str, str], detail: str
) -> None:
    response = client.post("/v1/messages", json=GOOD, headers=headers)
    body = assert_problem(response, 401)
    assert detail in body["detail"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("body", "status", "fields"),
    [
        ("{not json", 400, None),
        ("[]", 422, {"_schema"}),
        ({**GOOD, "colour": "red"}, 422, {"colour"}),
        ({**GOOD, "to": []}, 422, {"to"}),
        ({**GOOD, "to": [{"user_id": f"u{n}"} for n in range(1001)]}, 422, {"to"}),
        ({**GOOD, "to": [{"user_id": ""}]}, 422, {"to.0.user_id"}),
        ({**GOOD, "to": [{"user_id": "a", "extra": 1}]}, 422, {"to.0.extra"}),
        ({**GOOD, "channels": ["pigeon"]}, 422, {"channels.0"}),
        ({**GOOD, "channels": ["web", "web"]}, 422, {"channels"}),
        ({**GOOD, "channels": "web"}, 422, {"channels"}),
        ({**GOOD, "content": {"body": "no title"}}, 422, {"content.title"}),
        ({**GOOD, "content": {"title": "x", "url": "not a url"}}, 422, {"content.url"}),
        ({**GOOD, "category": "spam"}, 422, {"category"}),
        ({**GOOD, "priority": "urgent"}, 422, {"priority"}),
        ({"channels": ["web"], "content": {"title": "x"}}, 422, {"to"}),
    ],
)
def test_bad_bodies_are_problems_naming_the_field(
    client: FlaskClient, tenant: NewApp, body: Any, status: int, fields: set[str] | None
) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    response = client.post(
        "/v1/messages", data=data, headers=auth(tenant), content_type="application/json"
    )
    problem = assert_problem(response, status)
    if fields is not None:
        assert set(problem["errors"]) == fields


def test_a_body_over_256_kib_is_413(client: FlaskClient, tenant: NewApp) -> None:
    huge = {**GOOD, "content": {"title": "x", "body": "y" * (300 * 1024)}}
    assert_problem(client.post("/v1/messages", json=huge, headers=auth(tenant)), 413)


def test_another_apps_message_is_404(client: FlaskClient, tenant: NewApp, runtime: Runtime) -> None:
    message_id = client.post("/v1/messages", json=GOOD, headers=auth(tenant)).get_json()["id"]
    assert client.get(f"/v1/messages/{message_id}", headers=auth(tenant)).status_code == 200
    stranger = new_tenant(runtime)
    assert_problem(client.get(f"/v1/messages/{message_id}", headers=auth(stranger)), 404)
    assert_problem(client.get("/v1/messages/msg_nope", headers=auth(tenant)), 404)


def test_browser_tokens_name_the_app_and_user_and_their_ttl_is_bounded(
    client: FlaskClient, tenant: NewApp, settings: Settings
) -> None:
    response = client.post("/v1/users/alice/tokens", headers=auth(tenant), json={"ttl": 60})
    assert response.status_code == 201
    identity = verify_browser_token(settings.secret_key, response.get_json()["token"])
    assert (identity.app_id, identity.user_id) == (tenant.app_id, "alice")
    assert client.post("/v1/users/alice/tokens", headers=auth(tenant)).status_code == 201
    too_long = client.post("/v1/users/alice/tokens", headers=auth(tenant), json={"ttl": 10**7})
    assert set(assert_problem(too_long, 422)["errors"]) == {"ttl"}
    assert_problem(client.post("/v1/users/alice/tokens", json={}), 401)


def test_unknown_routes_and_methods_are_problems(client: FlaskClient, tenant: NewApp) -> None:
    assert_problem(client.get("/v1/nothing", headers=auth(tenant)), 404)
    assert_problem(client.put("/v1/messages", json=GOOD, headers=auth(tenant)), 405)


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz").get_json()
    assert ready["checks"] == {"store": "ok", "broker": "ok", "redis": "ok"}
    assert client.get("/openapi.json").get_json()["info"]["title"] == "omnipush"


def test_readiness_names_what_is_unreachable(settings: Settings) -> None:
    broken = settings.with_overrides(
        amqp_url="amqp://guest:guest@127.0.0.1:1/%2F", redis_url="redis://127.0.0.1:1/0"
    )
    app = create_app(broken)
    response = app.test_client().get("/readyz")
    body = assert_problem(response, 503)
    assert body["checks"]["store"] == "ok"
    assert body["checks"]["broker"].startswith("unreachable at 127.0.0.1:1")
    assert body["checks"]["redis"].startswith("unreachable")
    assert "broker" in body["detail"] and "redis" in body["detail"]


def test_a_message_not_yet_dispatched_can_be_canceled_and_only_then() -> None:
    # A store of its own: no relay or dispatcher of another test may take the message first.
    with isolated_settings() as own:
        runtime = Runtime.build(own)
        try:
            client = create_app(own, runtime=runtime).test_client()
            tenant = new_tenant(runtime)
            message_id = client.post("/v1/messages", json=GOOD, headers=auth(tenant)).get_json()[
                "id"
            ]
            assert_problem(
                client.delete(f"/v1/messages/{message_id}", headers=auth(new_tenant(runtime))), 404
            )

            canceled = client.delete(f"/v1/messages/{message_id}", headers=auth(tenant))
            assert canceled.status_code == 200
            body = canceled.get_json()
            assert body["status"] == "canceled"
            assert [e["stage"] for e in body["events"]] == ["accepted", "canceled"]
            again = assert_problem(
                client.delete(f"/v1/messages/{message_id}", headers=auth(tenant)), 409
            )
            assert "canceled" in again["detail"]

            late = client.post("/v1/messages", json=GOOD, headers=auth(tenant)).get_json()["id"]
            with runtime.engine.begin() as connection:
                connection.execute(
                    update(Message).where(Message.id == late).values(status="dispatched")
                )
            assert_problem(client.delete(f"/v1/messages/{late}", headers=auth(tenant)), 409)
        finally:
            runtime.close()


def test_messages_are_listed_newest_first_by_page_and_status(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    ids = [
        client.post("/v1/messages", json=GOOD, headers=auth(tenant)).get_json()["id"]
        for _ in range(5)
    ]
    with runtime.engine.begin() as connection:
        connection.execute(update(Message).where(Message.id == ids[1]).values(status="failed"))
    first = client.get("/v1/messages?limit=3", headers=auth(tenant)).get_json()
    assert [m["id"] for m in first["items"]] == ids[::-1][:3]
    rest = client.get(
        f"/v1/messages?limit=3&cursor={first['next_cursor']}", headers=auth(tenant)
    ).get_json()
    assert ([m["id"] for m in rest["items"]], rest["next_cursor"]) == (ids[::-1][3:], None)
    failed = client.get("/v1/messages?status=failed", headers=auth(tenant)).get_json()
    assert [m["id"] for m in failed["items"]] == [ids[1]]
    stranger = new_tenant(runtime)
    assert client.get("/v1/messages", headers=auth(stranger)).get_json()["items"] == []
    for bad in ("status=lost", "limit=0", "limit=201", "sort=asc", "created_after=yesterday"):
        assert_problem(client.get(f"/v1/messages?{bad}", headers=auth(tenant)), 422)


def test_messages_are_filtered_by_category_and_creation_time(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    marketing = client.post(
        "/v1/messages", json={**GOOD, "category": "marketing"}, headers=auth(tenant)
    ).get_json()
    later = client.post("/v1/messages", json=GOOD, headers=auth(tenant)).get_json()

    def listed(query: dict[str, str]) -> list[str]:
        page = client.get("/v1/messages", query_string=query, headers=auth(tenant)).get_json()
        return [m["id"] for m in page["items"]]

    assert listed({"category": "marketing"}) == [marketing["id"]]
    assert listed({"created_after": later["created_at"]}) == [later["id"]]
    assert listed({"created_before": later["created_at"]}) == [marketing["id"]]
