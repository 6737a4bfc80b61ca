"""`/v1/topics`: audiences per app, their subscribers, and messages sent to them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from producer_api.api_keys import NewApp
from producer_api.app import create_app
from shared.models import Subscription
from shared.runtime import Runtime
from shared.tokens import mint_browser_token
from tests.conftest import bearer as auth
from tests.conftest import isolated_settings, new_tenant
from tests.inbox_client import InboxClient
from tests.stack import Stack, wait_until
from tests.test_dispatch import deliveries, dispatch, running_dispatcher


def test_a_topic_is_created_renamed_and_counts_its_subscribers(
    client: FlaskClient, tenant: NewApp
) -> None:
    created = client.put(
        "/v1/topics/orders.shipped", json={"name": "Shipped"}, headers=auth(tenant)
    )
    assert created.status_code == 201
    assert created.get_json()["subscribers"] == 0
    renamed = client.put("/v1/topics/orders.shipped", json={"name": "Sent"}, headers=auth(tenant))
    assert (renamed.status_code, renamed.get_json()["name"]) == (200, "Sent")

    subscribe = client.post(
        "/v1/topics/orders.shipped/subscribers",
        json={"user_ids": ["u3", "u1", "u2", "u1"]},
        headers=auth(tenant),
    )
    assert subscribe.get_json() == {"subscribed": 3}
    again = client.post(
        "/v1/topics/orders.shipped/subscribers",
        json={"user_ids": ["u1", "u4"]},
        headers=auth(tenant),
    )
    assert again.get_json() == {"subscribed": 1}
    assert (
        client.get("/v1/topics/orders.shipped", headers=auth(tenant)).get_json()["subscribers"] == 4
    )

    first = client.get(
        "/v1/topics/orders.shipped/subscribers?limit=3", headers=auth(tenant)
    ).get_json()
    assert [i["user_id"] for i in first["items"]] == ["u1", "u2", "u3"]
    rest = client.get(
        f"/v1/topics/orders.shipped/subscribers?limit=3&cursor={first['next_cursor']}",
        headers=auth(tenant),
    ).get_json()
    assert ([i["user_id"] for i in rest["items"]], rest["next_cursor"]) == (["u4"], None)

    gone = client.delete("/v1/topics/orders.shipped/subscribers/u2", headers=auth(tenant))
    assert gone.status_code == 204
    assert (
        client.delete("/v1/topics/orders.shipped/subscribers/u2", headers=auth(tenant)).status_code
        == 404
    )


def test_a_deleted_topic_takes_its_subscriptions_with_it(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    headers = auth(tenant)
    client.put("/v1/topics/gone", json={}, headers=headers)
    client.post("/v1/topics/gone/subscribers", json={"user_ids": ["a", "b"]}, headers=headers)
    assert client.delete("/v1/topics/gone", headers=headers).status_code == 204
    assert client.get("/v1/topics/gone", headers=headers).status_code == 404
    with runtime.engine.connect() as connection:
        left = connection.scalar(
            select(func.count()).where(
                Subscription.app_id == tenant.app_id, Subscription.topic_key == "gone"
            )
        )
    assert left == 0
    # Made again, it starts empty; and a message can no longer name the deleted one.
    client.put("/v1/topics/gone", json={}, headers=headers)
    assert client.get("/v1/topics/gone", headers=headers).get_json()["subscribers"] == 0
    client.delete("/v1/topics/gone", headers=headers)
    message = {"to": [{"topic": "gone"}], "channels": ["web"], "content": {"title": "x"}}
    refused = client.post("/v1/messages", json=message, headers=headers)
    assert refused.status_code == 422
    assert client.delete("/v1/topics/gone", headers=headers).status_code == 404


@pytest.fixture
def own_store() -> Iterator[tuple[FlaskClient, Runtime]]:
    """The API on a store and queues of its own: no running relay or dispatcher takes its
    messages before the test says so."""
    with isolated_settings() as settings:
        runtime = Runtime.build(settings)
        try:
            with create_app(settings, runtime=runtime).test_client() as client:
                yield client, runtime
        finally:
            runtime.close()


def test_a_topic_message_reaches_whoever_is_subscribed_when_it_is_dispatched(
    own_store: tuple[FlaskClient, Runtime],
) -> None:
    client, runtime = own_store
    tenant = new_tenant(runtime)
    headers = auth(tenant)
    client.put("/v1/topics/launch", json={}, headers=headers)
    client.post("/v1/topics/launch/subscribers", json={"user_ids": ["ann", "ben"]}, headers=headers)
    to_topic = {"to": [{"topic": "launch"}], "channels": ["web"], "content": {"title": "Go"}}
    sent = client.post("/v1/messages", json=to_topic, headers=headers)
    assert sent.status_code == 202, sent.get_data(as_text=True)
    message_id = sent.get_json()["id"]
    # Accepted, not yet dispatched: ben leaves and cid joins in the meantime.
    client.delete("/v1/topics/launch/subscribers/ben", headers=headers)
    client.post("/v1/topics/launch/subscribers", json={"user_ids": ["cid"]}, headers=headers)
    with running_dispatcher(runtime):
        dispatch(runtime, message_id, tenant.app_id)
        wait_until(lambda: deliveries(runtime, message_id), 10, "the message dispatched")
    assert deliveries(runtime, message_id) == [("ann", "queued"), ("cid", "queued")]


def test_bad_topic_requests_are_problems(client: FlaskClient, tenant: NewApp) -> None:
    headers = auth(tenant)
    cases: list[tuple[Any, int]] = [
        (client.put("/v1/topics/Bad Key!", json={}, headers=headers), 422),
        (client.get("/v1/topics/missing", headers=headers), 404),
        (
            client.post(
                "/v1/topics/missing/subscribers", json={"user_ids": ["a"]}, headers=headers
            ),
            404,
        ),
        (client.get("/v1/topics/missing/subscribers", headers=headers), 404),
    ]
    client.put("/v1/topics/news", json={}, headers=headers)
    cases += [
        (client.post("/v1/topics/news/subscribers", json={"user_ids": []}, headers=headers), 422),
        (client.post("/v1/topics/news/subscribers", json={"users": ["a"]}, headers=headers), 422),
        (client.get("/v1/topics/news/subscribers?limit=0", headers=headers), 422),
        (client.get("/v1/topics/news/subscribers?page=2", headers=headers), 422),
    ]
    for response, status in cases:
        assert response.status_code == status, response.get_data(as_text=True)
        assert response.mimetype == "application/problem+json"


def test_another_apps_topics_are_invisible(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    client.put("/v1/topics/private", json={}, headers=auth(tenant))
    stranger = new_tenant(runtime)
    assert client.get("/v1/topics/private", headers=auth(stranger)).status_code == 404
    sneaky = client.post(
        "/v1/topics/private/subscribers", json={"user_ids": ["spy"]}, headers=auth(stranger)
    )
    assert sneaky.status_code == 404
    message = {"to": [{"topic": "private"}], "channels": ["web"], "content": {"title": "x"}}
    refused = client.post("/v1/messages", json=message, headers=auth(stranger))
    assert refused.status_code == 422
    assert set(refused.get_json()["errors"]) == {"to.0.topic"}


def test_a_message_to_a_topic_reaches_its_subscribers_once_each(
    stack: Stack, runtime: Runtime
) -> None:
    tenant = new_tenant(runtime)
    headers = auth(tenant)
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as api:
        api.put("/v1/topics/deals", json={})
        api.post("/v1/topics/deals/subscribers", json={"user_ids": ["ivy", "jon"]})
        api.put("/v1/topics/silent", json={})
        tokens = {
            user: mint_browser_token(stack.settings.secret_key, tenant.app_id, user, 600)[0]
            for user in ("ivy", "jon", "kim")
        }
        inboxes = {
            user: InboxClient(stack.gateway_url, token).connect() for user, token in tokens.items()
        }
        try:
            sent = api.post(
                "/v1/messages",
                json={
                    # ivy is named twice (directly and through the topic): one delivery.
                    "to": [{"topic": "deals"}, {"user_id": "ivy"}],
                    "channels": ["web"],
                    "content": {"title": "Deal"},
                },
            )
            assert sent.status_code == 202, sent.text
            message_id = sent.json()["id"]
            inboxes["ivy"].wait_for(1)
            inboxes["jon"].wait_for(1)
            wait_until(
                lambda: api.get(f"/v1/messages/{message_id}").json()["status"] == "completed",
                10,
                "completed",
            )
            shown = api.get(f"/v1/messages/{message_id}").json()
            assert sorted(d["user_id"] for d in shown["deliveries"]) == ["ivy", "jon"]
            assert inboxes["kim"].notifications == []
            assert len(inboxes["ivy"].notifications) == 1

            nobody = api.post(
                "/v1/messages",
                json={"to": [{"topic": "silent"}], "channels": ["web"], "content": {"title": "?"}},
            ).json()["id"]
            wait_until(
                lambda: api.get(f"/v1/messages/{nobody}").json()["status"] == "completed",
                10,
                "a message with no one to reach to complete",
            )
        finally:
            for inbox in inboxes.values():
                inbox.close()
