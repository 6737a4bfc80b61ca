"""Apps are walled off: app A can neither read, nor change, nor send with app B's resources."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from producer_api.api_keys import NewApp
from shared.runtime import Runtime
from shared.tokens import verify_browser_token
from tests.conftest import bearer, new_tenant
from tests.test_api import assert_problem

SEND = {"to": [{"user_id": "u"}], "channels": ["web"], "content": {"title": "t"}}
B_POLICY = {"dedup_window": {"marketing": 0}, "discard": {"all": False, "templates": ["b-hello"]}}


@pytest.fixture
def owners(client: FlaskClient, runtime: Runtime) -> dict[str, Any]:
    """App B with one of everything, and app A that will try to reach it.

    New ones for every test: what A does in one test (even making a user, topic or template of
    B's names in its own app, as one test does) cannot change what another test sees.
    """
    b, a = new_tenant(runtime), new_tenant(runtime)
    made = [
        client.put("/v1/users/bea", json={"email": "bea@example.com"}, headers=bearer(b)),
        client.put("/v1/topics/b-news", json={"name": "B news"}, headers=bearer(b)),
        client.post("/v1/topics/b-news/subscribers", json={"user_ids": ["bea"]}, headers=bearer(b)),
        client.put(
            "/v1/templates/b-hello",
            json={"parts": {"web": {"title": "Hello {{ name }}"}}},
            headers=bearer(b),
        ),
        client.put("/v1/policy", json=B_POLICY, headers=bearer(b)),
        client.post("/v1/messages", json=SEND, headers=bearer(b)),
    ]
    assert all(r.status_code < 300 for r in made), [r.get_json() for r in made]
    return {"a": a, "b": b, "message": made[-1].get_json()["id"]}


USER, TOPIC, TEMPLATE, MESSAGE = (
    "/v1/users/bea",
    "/v1/topics/b-news/subscribers",
    "/v1/templates/b-hello",
    "/v1/messages/{message}",
)
# What app A tries (method, path, body), how it is refused, and B's resource that must be intact.
ATTEMPTS = [
    ("GET", USER, None, 404, None, USER),
    ("DELETE", USER, None, 404, None, USER),
    ("GET", "/v1/topics/b-news", None, 404, None, TOPIC),
    ("DELETE", "/v1/topics/b-news", None, 404, None, TOPIC),
    ("GET", TOPIC, None, 404, None, TOPIC),
    ("POST", TOPIC, {"user_ids": ["eve"]}, 404, None, TOPIC),
    ("DELETE", f"{TOPIC}/bea", None, 404, None, TOPIC),
    ("GET", TEMPLATE, None, 404, None, TEMPLATE),
    ("DELETE", TEMPLATE, None, 404, None, TEMPLATE),
    ("POST", f"{TEMPLATE}/preview", {"params": {"name": "x"}}, 404, None, TEMPLATE),
    ("GET", MESSAGE, None, 404, None, MESSAGE),
    ("DELETE", MESSAGE, None, 404, None, MESSAGE),
    ("POST", "/v1/messages", {**SEND, "to": [{"topic": "b-news"}]}, 422, "to.0.topic", TOPIC),
    (
        "POST",
        "/v1/messages",
        {"to": SEND["to"], "channels": ["web"], "template": "b-hello", "params": {"name": "x"}},
        422,
        "template",
        TEMPLATE,
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field", "bs"),
    ATTEMPTS,
    ids=[f"{m} {p}" + (f" {f}" if f else "") for m, p, _b, _s, f, _c in ATTEMPTS],
)
def test_app_a_cannot_reach_app_bs_resources(
    client: FlaskClient,
    owners: dict[str, Any],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    field: str | None,
    bs: str,
) -> None:
    message = owners["message"]
    response = client.open(
        path.format(message=message), method=method, json=body, headers=bearer(owners["a"])
    )
    problem = assert_problem(response, status)
    if field:
        assert field in problem["errors"], problem["errors"]
    intact = client.get(bs.format(message=message), headers=bearer(owners["b"]))
    assert intact.status_code == 200, f"B lost {bs}"
    if bs == TOPIC:
        assert [s["user_id"] for s in intact.get_json()["items"]] == ["bea"]
    if bs == MESSAGE:
        assert intact.get_json()["status"] != "canceled"


# Each list of app A, and what of B's it must not show (A may have things of the same names).
LISTS = [
    ("/v1/users", "bea@example.com"),
    ("/v1/topics", "B news"),
    ("/v1/templates", "Hello {{ name }}"),
    ("/v1/messages", None),  # B's message id
]


@pytest.mark.parametrize(("path", "bs"), LISTS, ids=[path for path, _ in LISTS])
def test_a_s_lists_show_nothing_of_b_s(
    client: FlaskClient, owners: dict[str, Any], path: str, bs: str | None
) -> None:
    marker = bs or owners["message"]
    mine = client.get(path, headers=bearer(owners["b"]))
    assert mine.status_code == 200 and marker in mine.get_data(as_text=True)
    theirs = client.get(path, headers=bearer(owners["a"]))
    assert theirs.status_code == 200 and marker not in theirs.get_data(as_text=True)


def test_b_s_things_are_unchanged_and_not_in_a_s_lists(
    client: FlaskClient, owners: dict[str, Any]
) -> None:
    a, b = owners["a"], owners["b"]
    # A writing a user or topic of the same name makes A's own; B's stay as they were.
    client.put("/v1/users/bea", json={"email": "impostor@example.com"}, headers=bearer(a))
    client.put("/v1/topics/b-news", json={"name": "A's"}, headers=bearer(a))
    client.put("/v1/templates/b-hello", json={"parts": {"web": {"title": "A"}}}, headers=bearer(a))
    assert client.get("/v1/users/bea", headers=bearer(b)).get_json()["email"] == "bea@example.com"
    assert client.get("/v1/topics/b-news", headers=bearer(b)).get_json()["name"] == "B news"
    template = client.get("/v1/templates/b-hello", headers=bearer(b)).get_json()
    assert template["parts"]["web"]["title"] == "Hello {{ name }}"
    subscribers = client.get("/v1/topics/b-news/subscribers", headers=bearer(b)).get_json()
    assert [s["user_id"] for s in subscribers["items"]] == ["bea"]
    listed = client.get("/v1/messages", headers=bearer(a)).get_json()["items"]
    assert owners["message"] not in [m["id"] for m in listed]
    assert client.get(f"/v1/messages/{owners['message']}", headers=bearer(b)).status_code == 200


def test_a_s_policy_is_a_s_own_and_leaves_b_s_as_it_was(
    client: FlaskClient, owners: dict[str, Any]
) -> None:
    a, b = owners["a"], owners["b"]
    bs = client.get("/v1/policy", headers=bearer(b)).get_json()
    assert bs["overrides"] == B_POLICY and bs["discard"]["templates"] == ["b-hello"]
    theirs = client.get("/v1/policy", headers=bearer(a)).get_json()
    assert theirs["overrides"] == {} and theirs["updated_at"] is None
    assert theirs["discard"] == {"all": False, "templates": []}
    # A's PUT and DELETE are of A's own policy (there is no path naming another app's).
    assert client.put("/v1/policy", json={}, headers=bearer(a)).status_code == 200
    assert client.delete("/v1/policy", headers=bearer(a)).status_code == 204
    assert client.get("/v1/policy", headers=bearer(b)).get_json() == bs


def test_a_browser_token_minted_by_a_names_a_only(
    client: FlaskClient, owners: dict[str, Any], runtime: Runtime
) -> None:
    a: NewApp = owners["a"]
    minted = client.post("/v1/users/bea/tokens", json={}, headers=bearer(a)).get_json()
    identity = verify_browser_token(runtime.settings.secret_key, minted["token"])
    assert (identity.app_id, identity.user_id) == (a.app_id, "bea")
