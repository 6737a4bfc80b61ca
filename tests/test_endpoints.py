"""`/v1/endpoints`: an app's webhooks and chat robots over REST, and messages that name them."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from flask.testing import FlaskClient

from dispatcher.targets import Target, delivery_targets
from producer_api.api_keys import NewApp
from shared.runtime import Runtime
from tests.conftest import bearer, new_tenant
from tests.test_api import assert_problem

HOOK = {"kind": "webhook", "url": "https://shop.example/hooks/omnipush"}
ROBOT = {"kind": "dingtalk", "url": "https://shop.example/robot/send?access_token=t"}


def put(client: FlaskClient, tenant: NewApp, name: str, body: dict[str, Any]) -> Any:
    return client.put(f"/v1/endpoints/{name}", json=body, headers=bearer(tenant))


def message_to(*to: dict[str, str], channels: tuple[str, ...] = ("webhook",)) -> dict[str, Any]:
    return {"to": list(to), "channels": list(channels), "content": {"title": "Shipped"}}


def test_a_webhook_without_a_secret_gets_one_shown_only_in_the_answer_to_put(
    client: FlaskClient, tenant: NewApp
) -> None:
    created = put(client, tenant, "orders", HOOK)
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["name"] == "orders" and body["kind"] == "webhook" and body["has_secret"]
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"].removeprefix("whsec_"), validate=True)) >= 24

    shown = client.get("/v1/endpoints/orders", headers=bearer(tenant)).get_json()
    assert "secret" not in shown and shown["has_secret"] and shown["url"] == HOOK["url"]
    listed = client.get("/v1/endpoints", headers=bearer(tenant)).get_json()
    assert [item["name"] for item in listed["items"]] == ["orders"]
    assert "secret" not in listed["items"][0] and listed["next_cursor"] is None

    # A replace without a secret keeps the one in force; a given secret replaces it.
    moved = put(client, tenant, "orders", {**HOOK, "url": "https://shop.example/v2"})
    assert moved.status_code == 200
    assert moved.get_json()["secret"] == body["secret"]
    rotated = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert put(client, tenant, "orders", {**HOOK, "secret": rotated}).get_json()["secret"] == (
        rotated
    )


def test_a_robot_keeps_its_own_signing_secret_or_none(client: FlaskClient, tenant: NewApp) -> None:
    unsigned = put(client, tenant, "ops-room", ROBOT).get_json()
    assert unsigned["has_secret"] is False and "secret" not in unsigned
    signed = put(client, tenant, "ops-room", {**ROBOT, "secret": "SEC123"}).get_json()
    assert signed["secret"] == "SEC123" and signed["has_secret"]


def test_a_robot_turned_webhook_gets_a_webhook_secret_not_the_robots(
    client: FlaskClient, tenant: NewApp
) -> None:
    put(client, tenant, "room", {**ROBOT, "secret": "SEC123"})
    turned = put(client, tenant, "room", HOOK).get_json()
    assert turned["kind"] == "webhook" and turned["secret"].startswith("whsec_")
    back = put(client, tenant, "room", ROBOT).get_json()
    assert back["has_secret"] is False


def test_delete_forgets_the_endpoint(client: FlaskClient, tenant: NewApp) -> None:
    put(client, tenant, "gone", HOOK)
    assert client.delete("/v1/endpoints/gone", headers=bearer(tenant)).status_code == 204
    assert_problem(client.get("/v1/endpoints/gone", headers=bearer(tenant)), 404)
    assert_problem(client.delete("/v1/endpoints/gone", headers=bearer(tenant)), 404)


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("a", {**HOOK, "url": "http://127.0.0.1:8080/hook"}, "url"),
        ("a", {**HOOK, "url": "http://169.254.169.254/latest/meta-data/"}, "url"),
        ("a", {**HOOK, "url": "https://metadata.internal.example/hook"}, "url"),
        ("a", {**ROBOT, "url": "http://10.0.0.7/robot"}, "url"),
        ("a", {**HOOK, "url": "ftp://shop.example/hook"}, "url"),
        ("a", {**HOOK, "secret": "not-a-standard-webhooks-secret"}, "secret"),
        ("a", {**HOOK, "secret": "whsec_" + base64.b64encode(b"short").decode()}, "secret"),
        ("a", {**HOOK, "kind": "telegram"}, "kind"),
        ("a", {**HOOK, "extra": 1}, "extra"),
        ("-a", HOOK, "name"),
        ("a%20b", HOOK, "name"),
    ],
    ids=[
        "loopback",
        "metadata",
        "a name that resolves inside",
        "private robot",
        "not http",
        "a secret not whsec",
        "a secret too short",
        "unknown kind",
        "unknown field",
        "name starts with a dash",
        "name with a space",
    ],
)
def test_a_bad_endpoint_is_a_422_naming_the_field(
    client: FlaskClient, tenant: NewApp, name: str, body: dict[str, Any], field: str
) -> None:
    errors = assert_problem(put(client, tenant, name, body), 422)["errors"]
    assert list(errors) == [field], errors
    assert_problem(client.get(f"/v1/endpoints/{name}", headers=bearer(tenant)), 404)


def test_endpoints_belong_to_one_app(client: FlaskClient, tenant: NewApp, runtime: Runtime) -> None:
    put(client, tenant, "mine", HOOK)
    other = new_tenant(runtime)
    assert_problem(client.get("/v1/endpoints/mine", headers=bearer(other)), 404)
    assert_problem(client.delete("/v1/endpoints/mine", headers=bearer(other)), 404)
    assert client.get("/v1/endpoints", headers=bearer(other)).get_json()["items"] == []
    assert_problem(
        client.post("/v1/messages", json=message_to({"endpoint": "mine"}), headers=bearer(other)),
        422,
    )
    for response in (
        client.get("/v1/endpoints"),
        client.put("/v1/endpoints/mine", json=HOOK),
        client.delete("/v1/endpoints/mine", headers={"Authorization": "Bearer nope"}),
    ):
        assert_problem(response, 401)


def test_a_message_to_an_endpoint_is_accepted_on_the_channel_its_kind_needs(
    client: FlaskClient, tenant: NewApp
) -> None:
    put(client, tenant, "orders", HOOK)
    put(client, tenant, "ops-room", ROBOT)
    accepted = client.post(
        "/v1/messages", json=message_to({"endpoint": "orders"}), headers=bearer(tenant)
    )
    assert accepted.status_code == 202, accepted.get_json()


@pytest.mark.parametrize(
    ("message", "field", "says"),
    [
        (message_to({"endpoint": "nobody"}), "to.0.endpoint", "No endpoint nobody"),
        (
            message_to({"user_id": "ann"}, {"endpoint": "orders"}, channels=("web",)),
            "to.1.endpoint",
            "None of the channels delivers to a bare endpoint",
        ),
        (message_to({"endpoint": "ops-room"}), "to.0.endpoint", "needs channel chat"),
        (message_to({"endpoint": "bad name"}), "to.0.endpoint", "An endpoint name is"),
    ],
    ids=["unknown", "no endpoint channel", "a robot on webhook", "bad name"],
)
def test_a_message_to_an_endpoint_it_cannot_reach_is_a_422_naming_it(
    client: FlaskClient, tenant: NewApp, message: dict[str, Any], field: str, says: str
) -> None:
    put(client, tenant, "orders", HOOK)
    put(client, tenant, "ops-room", ROBOT)
    errors = assert_problem(client.post("/v1/messages", json=message, headers=bearer(tenant)), 422)[
        "errors"
    ]
    assert list(errors) == [field], errors
    assert says in errors[field][0]


def test_a_batch_rejects_only_the_item_with_an_unknown_endpoint(
    client: FlaskClient, tenant: NewApp
) -> None:
    put(client, tenant, "orders", HOOK)
    response = client.post(
        "/v1/messages/batch",
        json={"messages": [message_to({"endpoint": "orders"}), message_to({"endpoint": "x"})]},
        headers=bearer(tenant),
    )
    first, second = response.get_json()["results"]
    assert first["status"] == "accepted"
    assert list(second["error"]["errors"]) == ["to.0.endpoint"]


def test_an_endpoint_is_delivered_only_on_the_channel_of_its_kind() -> None:
    reaches = {"webhook": frozenset({"endpoint"}), "chat": frozenset({"endpoint"})}
    to = [{"endpoint": "orders"}, {"endpoint": "ops"}, {"endpoint": "deleted"}]
    targets = delivery_targets(
        to, ["webhook", "chat"], lambda _t: [], reaches, {"orders": "webhook", "ops": "chat"}
    )
    assert targets == [
        Target("endpoint:orders", None, "orders", "webhook"),
        Target("endpoint:ops", None, "ops", "chat"),
        # Gone since acceptance: every channel that reaches endpoints records it as failed.
        Target("endpoint:deleted", None, "deleted", "webhook"),
        Target("endpoint:deleted", None, "deleted", "chat"),
    ]


def test_the_openapi_document_lists_the_endpoint_operations(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    assert set(paths["/v1/endpoints"]) >= {"get"}
    assert set(paths["/v1/endpoints/{name}"]) >= {"put", "get", "delete"}
    put_op = paths["/v1/endpoints/{name}"]["put"]
    assert {"200", "201", "401", "404", "422", "429"} <= set(put_op["responses"])
