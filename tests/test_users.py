"""`/v1/users/{user_id}`: recipients with validated addresses, devices and wishes, per app."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import insert

from producer_api.api_keys import NewApp
from shared.ids import new_id, utcnow
from shared.models import Delivery
from shared.runtime import Runtime
from tests.conftest import bearer as auth
from tests.conftest import new_tenant
from tests.webpush_receiver import AUTH, P256DH

SUBSCRIPTION = {
    "endpoint": "https://push.example.net/send/abc",
    "keys": {"p256dh": P256DH, "auth": AUTH},
    "expirationTime": None,
}
FULL = {
    "email": "alice@example.com",
    "phone": "+33 6 12 34 56 78",
    "timezone": "Europe/Paris",
    "locale": "fr-FR",
    "devices": [
        {"platform": "fcm", "token": "fcm-token-1"},
        {"platform": "webpush", "subscription": SUBSCRIPTION},
    ],
    "preferences": {"marketing": {"email": False, "sms": False}, "notification": {"web": True}},
    "quiet_hours": {"start": "22:00", "end": "07:30"},
}


def test_a_user_is_created_replaced_read_and_deleted(client: FlaskClient, tenant: NewApp) -> None:
    created = client.put("/v1/users/alice", json=FULL, headers=auth(tenant))
    assert created.status_code == 201, created.get_data(as_text=True)
    shown = client.get("/v1/users/alice", headers=auth(tenant)).get_json()
    assert shown["phone"] == "+33612345678"  # stored as E.164
    assert shown["devices"] == FULL["devices"]
    assert shown["preferences"] == FULL["preferences"]
    assert shown["quiet_hours"] == FULL["quiet_hours"]

    replaced = client.put("/v1/users/alice", json={"email": "a@example.org"}, headers=auth(tenant))
    assert replaced.status_code == 200
    body = replaced.get_json()
    assert (body["email"], body["phone"], body["devices"]) == ("a@example.org", None, [])
    assert body["created_at"] == shown["created_at"]

    assert client.delete("/v1/users/alice", headers=auth(tenant)).status_code == 204
    assert client.get("/v1/users/alice", headers=auth(tenant)).status_code == 404
    assert client.delete("/v1/users/alice", headers=auth(tenant)).status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": "not-an-address"}, "email"),
        ({"phone": "0612345678"}, "phone"),
        ({"phone": "+1 555 0100 999999"}, "phone"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"locale": "french!"}, "locale"),
        ({"devices": [{"platform": "pager", "token": "x"}]}, "devices.0.platform"),
        ({"devices": [{"platform": "fcm"}]}, "devices.0.token"),
        (
            {"devices": [{"platform": "apns", "token": "t", "subscription": SUBSCRIPTION}]},
            "devices.0.subscription",
        ),
        ({"devices": [{"platform": "webpush", "token": "t"}]}, "devices.0.subscription"),
        (
            {
                "devices": [
                    {
                        "platform": "webpush",
                        "subscription": {**SUBSCRIPTION, "endpoint": "http://x"},
                    }
                ]
            },
            "devices.0.subscription.endpoint",
        ),
        ({"devices": [{"platform": "fcm", "token": "t"}] * 101}, "devices"),
        ({"preferences": {"spam": {"email": False}}}, "preferences.spam.key"),
        (
            {"preferences": {"marketing": {"pigeon": False}}},
            "preferences.marketing.value.pigeon.key",
        ),
        (
            {"preferences": {"marketing": {"email": "no"}}},
            "preferences.marketing.value.email.value",
        ),
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours.start"),
        ({"quiet_hours": {"start": "22:00"}}, "quiet_hours.end"),
        ({"nickname": "al"}, "nickname"),
    ],
)
def test_bad_fields_are_422_naming_the_field(
    client: FlaskClient, tenant: NewApp, change: dict[str, Any], field: str
) -> None:
    response = client.put("/v1/users/bob", json={**FULL, **change}, headers=auth(tenant))
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert field in response.get_json()["errors"]


def test_another_apps_user_is_invisible_and_untouchable(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    assert client.put("/v1/users/carol", json=FULL, headers=auth(tenant)).status_code == 201
    stranger = new_tenant(runtime)
    assert client.get("/v1/users/carol", headers=auth(stranger)).status_code == 404
    assert client.delete("/v1/users/carol", headers=auth(stranger)).status_code == 404
    # The stranger's own "carol" is another user altogether.
    assert client.put("/v1/users/carol", json={}, headers=auth(stranger)).status_code == 201
    assert client.get("/v1/users/carol", headers=auth(tenant)).get_json()["email"] == FULL["email"]


def test_users_need_an_api_key_and_a_sane_id(client: FlaskClient, tenant: NewApp) -> None:
    assert client.get("/v1/users/alice").status_code == 401
    long_id = "u" * 201
    assert client.put(f"/v1/users/{long_id}", json={}, headers=auth(tenant)).status_code == 422


def test_deleting_a_user_masks_the_addresses_their_past_deliveries_went_to(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    client.put("/v1/users/mia", json={"email": "mia@example.com"}, headers=auth(tenant))
    message_id = client.post(
        "/v1/messages",
        json={"to": [{"user_id": "mia"}], "channels": ["web"], "content": {"title": "t"}},
        headers=auth(tenant),
    ).get_json()["id"]
    now = utcnow()
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(Delivery),
            [
                {
                    "id": new_id("dlv"),
                    "message_id": message_id,
                    "app_id": tenant.app_id,
                    "recipient": "user:mia",
                    "user_id": "mia",
                    "address": address,
                    "channel": channel,
                    "status": "sent",
                    "created_at": now,
                    "updated_at": now,
                }
                for channel, address in (("email", "mia@example.com"), ("sms", "+33612345678"))
            ],
        )
    assert client.delete("/v1/users/mia", headers=auth(tenant)).status_code == 204
    shown = client.get(f"/v1/messages/{message_id}", headers=auth(tenant)).get_json()
    assert sorted(d["address"] for d in shown["deliveries"]) == ["+33*******78", "m***@example.com"]
    assert client.get("/v1/users/mia", headers=auth(tenant)).status_code == 404
