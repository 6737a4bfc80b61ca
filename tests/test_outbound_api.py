"""The API refuses URLs it would later call into its own network: callbacks and Web Push."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest
from flask.testing import FlaskClient

from producer_api.api_keys import NewApp
from producer_api.app import create_app
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import bearer
from tests.offline_dns import offline_resolver
from tests.test_api import assert_problem
from tests.webpush_receiver import AUTH, P256DH

MESSAGE = {"to": [{"user_id": "ann"}], "channels": ["web"], "content": {"title": "Hi"}}
INTERNAL = [
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:6379/",
    "http://[::1]/",
    "https://metadata.internal.example/hook",
    "http://10.0.0.7/hook",
]


def subscription(endpoint: str) -> dict[str, Any]:
    return {"endpoint": endpoint, "keys": {"p256dh": P256DH, "auth": AUTH}}


@pytest.mark.parametrize("url", INTERNAL)
def test_a_callback_url_into_the_servers_network_is_a_422_naming_it(
    client: FlaskClient, tenant: NewApp, url: str
) -> None:
    response = client.post(
        "/v1/messages", json={**MESSAGE, "callback_url": url}, headers=bearer(tenant)
    )
    errors = assert_problem(response, 422)["errors"]
    assert list(errors) == ["callback_url"]
    assert "does not call private, loopback, link-local" in errors["callback_url"][0]


def test_a_batch_rejects_only_the_item_with_an_internal_callback(
    client: FlaskClient, tenant: NewApp
) -> None:
    response = client.post(
        "/v1/messages/batch",
        json={
            "messages": [
                {**MESSAGE, "callback_url": "https://shop.example/hooks"},
                {**MESSAGE, "callback_url": "http://169.254.169.254/"},
            ]
        },
        headers=bearer(tenant),
    )
    assert response.status_code == 200, response.get_json()
    first, second = response.get_json()["results"]
    assert first["status"] == "accepted"
    assert second["status"] == "rejected"
    assert list(second["error"]["errors"]) == ["callback_url"]


@pytest.mark.parametrize("url", ["https://127.0.0.1/push", "https://[::1]/push"])
def test_a_web_push_endpoint_into_the_servers_network_is_a_422_naming_it(
    client: FlaskClient, tenant: NewApp, url: str
) -> None:
    response = client.put(
        "/v1/users/ann",
        json={"devices": [{"platform": "webpush", "subscription": subscription(url)}]},
        headers=bearer(tenant),
    )
    errors = assert_problem(response, 422)["errors"]
    assert list(errors) == ["devices.0.subscription.endpoint"]


def test_the_allow_list_lets_a_private_deployment_use_its_own_addresses(
    settings: Settings, runtime: Runtime, tenant: NewApp
) -> None:
    private = settings.with_overrides(outbound_allow=(ipaddress.ip_network("127.0.0.0/8"),))
    app = create_app(
        private,
        runtime=dataclasses.replace(runtime, settings=private),
        resolver=offline_resolver(),
    )
    with app.test_client() as client:
        message = client.post(
            "/v1/messages",
            json={**MESSAGE, "callback_url": "http://127.0.0.1:9000/hooks"},
            headers=bearer(tenant),
        )
        user = client.put(
            "/v1/users/ann",
            json={
                "devices": [
                    {"platform": "webpush", "subscription": subscription("https://127.0.0.1/p")}
                ]
            },
            headers=bearer(tenant),
        )
        still_refused = client.post(
            "/v1/messages",
            json={**MESSAGE, "callback_url": "http://169.254.169.254/"},
            headers=bearer(tenant),
        )
    assert message.status_code == 202, message.get_json()
    assert user.status_code in (200, 201), user.get_json()
    assert_problem(still_refused, 422)
