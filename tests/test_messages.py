"""Every field of a message: scheduling, expiry, dedup key, callback, bare addresses, templates."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from producer_api.api_keys import NewApp
from shared.ids import utcnow
from shared.models import Event, OutboxEntry
from shared.runtime import Runtime
from tests.conftest import bearer as auth
from tests.test_api import assert_problem

WEB = {"to": [{"user_id": "alice"}], "channels": ["web"], "content": {"title": "Hi"}}


def at(seconds: float) -> str:
    return (utcnow() + timedelta(seconds=seconds)).isoformat()


def post(client: FlaskClient, tenant: NewApp, **changes: Any) -> Any:
    return client.post("/v1/messages", json={**WEB, **changes}, headers=auth(tenant))


def outbox_of(runtime: Runtime, message_id: str) -> list[OutboxEntry]:
    with runtime.sessions() as session:
        return list(
            session.scalars(select(OutboxEntry).where(OutboxEntry.message_id == message_id))
        )


def test_a_message_for_later_is_scheduled_and_waits_in_the_store(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    send_at = utcnow() + timedelta(days=2)
    response = post(client, tenant, send_at=send_at.isoformat())
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["status"] == "scheduled"
    (row,) = outbox_of(runtime, body["id"])
    assert row.available_at == send_at and row.published_at is None
    shown = client.get(f"/v1/messages/{body['id']}", headers=auth(tenant)).get_json()
    assert shown["status"] == "scheduled"
    assert [e["stage"] for e in shown["events"]] == ["scheduled"]
    assert shown["events"][0]["detail"]["send_at"] == send_at.isoformat()


def test_a_send_at_in_the_past_is_sent_now(client: FlaskClient, tenant: NewApp) -> None:
    response = post(client, tenant, send_at=at(-60))
    assert response.get_json()["status"] == "accepted"


def test_canceling_a_scheduled_message_drops_it_from_the_outbox(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    message_id = post(client, tenant, send_at=at(3600)).get_json()["id"]
    canceled = client.delete(f"/v1/messages/{message_id}", headers=auth(tenant))
    assert canceled.status_code == 200 and canceled.get_json()["status"] == "canceled"
    assert outbox_of(runtime, message_id) == []


def test_the_optional_fields_are_kept_and_shown(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    expires_at = utcnow() + timedelta(hours=1)
    response = post(
        client,
        tenant,
        expires_at=expires_at.isoformat(),
        dedup_key="order-42-shipped",
        callback_url="https://shop.example/hooks/omnipush",
        fallback=["web"],
        category="verification",
        priority="high",
    )
    assert response.status_code == 202, response.get_json()
    shown = client.get(f"/v1/messages/{response.get_json()['id']}", headers=auth(tenant))
    body = shown.get_json()
    assert body["dedup_key"] == "order-42-shipped"
    assert body["callback_url"] == "https://shop.example/hooks/omnipush"
    assert body["fallback"] == ["web"]
    assert body["expires_at"] == expires_at.isoformat()
    assert (body["category"], body["priority"], body["send_at"]) == ("verification", "high", None)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"send_at": at(31 * 86400)}, "send_at"),
        ({"send_at": "2026-12-01T10:00:00"}, "send_at"),  # no time zone: ambiguous
        ({"send_at": "tomorrow"}, "send_at"),
        ({"expires_at": at(-1)}, "expires_at"),
        ({"send_at": at(3600), "expires_at": at(60)}, "expires_at"),
        ({"dedup_key": ""}, "dedup_key"),
        ({"dedup_key": "k" * 201}, "dedup_key"),
        ({"callback_url": "ftp://files.example/x"}, "callback_url"),
        ({"callback_url": "not a url"}, "callback_url"),
        ({"to": [{"email": "not-an-address"}]}, "to.0.email"),
        ({"to": [{"phone": "+1 555"}]}, "to.0.phone"),
        ({"to": [{"phone": "0612345678"}]}, "to.0.phone"),
        # Valid addresses, but no installed channel among `channels` reaches a bare address.
        ({"to": [{"email": "bob@example.com"}]}, "to.0.email"),
        ({"to": [{"user_id": "a"}, {"phone": "+33612345678"}]}, "to.1.phone"),
        ({"to": [{"user_id": "a", "email": "a@example.com"}]}, "to.0._schema"),
        ({"template": "welcome"}, "content"),
        ({"params": {"name": "Ann"}}, "params"),
        ({"fallback": ["web", "carrier-pigeon"]}, "fallback.1"),
        ({"fallback": ["web", "web"]}, "fallback"),
        ({"fallback": []}, "fallback"),
        ({"fallback": "web"}, "fallback"),
    ],
)
def test_bad_fields_are_422_naming_the_field(
    client: FlaskClient, tenant: NewApp, changes: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/messages", json={**WEB, **changes}, headers=auth(tenant))
    problem = assert_problem(response, 422)
    assert field in problem["errors"], problem["errors"]


TEMPLATE = {
    "parts": {
        "web": {"title": "Order {{ order }} shipped", "body": "Hi {{ name }}", "url": "{{ url }}"}
    }
}


def test_a_templated_message_is_rendered_with_its_params_when_accepted(
    client: FlaskClient, tenant: NewApp
) -> None:
    put = client.put("/v1/templates/shipped", json=TEMPLATE, headers=auth(tenant))
    assert put.status_code in (200, 201), put.get_json()
    params = {"order": 42, "name": "Ann", "url": "https://shop.example/42"}
    response = post(client, tenant, content=None, template="shipped", params=params)
    assert response.status_code == 202, response.get_json()
    shown = client.get(f"/v1/messages/{response.get_json()['id']}", headers=auth(tenant))
    content = shown.get_json()["content"]
    assert (content["title"], content["body"], content["url"]) == (
        "Order 42 shipped",
        "Hi Ann",
        "https://shop.example/42",
    )
    assert shown.get_json()["template"] == "shipped"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"template": "no-such-template", "params": {}}, "template"),
        ({"template": "shipped", "params": {"order": 1}}, "params"),  # name and url missing
    ],
)
def test_a_template_that_cannot_be_used_is_422(
    client: FlaskClient, tenant: NewApp, changes: dict[str, Any], field: str
) -> None:
    client.put("/v1/templates/shipped", json=TEMPLATE, headers=auth(tenant))
    body = {key: value for key, value in {**WEB, **changes}.items() if key != "content"}
    problem = assert_problem(client.post("/v1/messages", json=body, headers=auth(tenant)), 422)
    assert field in problem["errors"], problem


def test_a_template_without_a_part_for_a_channel_is_422(
    client: FlaskClient, tenant: NewApp
) -> None:
    sms_only = {"parts": {"sms": {"text": "Code {{ code }}"}}}
    assert client.put("/v1/templates/code", json=sms_only, headers=auth(tenant)).status_code < 300
    body = {"to": WEB["to"], "channels": ["web"], "template": "code", "params": {"code": 1}}
    problem = assert_problem(client.post("/v1/messages", json=body, headers=auth(tenant)), 422)
    assert "web" in problem["errors"]["template"][0]


def test_the_accepted_event_says_how_many_entries_the_message_had(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    to = [{"user_id": "a"}, {"user_id": "b"}]
    message_id = post(client, tenant, to=to).get_json()["id"]
    with runtime.sessions() as session:
        event = session.scalars(select(Event).where(Event.message_id == message_id)).one()
    assert (event.stage, event.detail) == ("accepted", {"recipients": 2})


def test_the_timeline_is_in_the_order_things_happened_not_the_order_they_were_written(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    """The relay writes `queued` once the broker confirmed, which may be after the dispatcher
    wrote `dispatched`; each event's time puts them right."""
    message_id = post(client, tenant).get_json()["id"]
    with runtime.sessions() as session, session.begin():
        accepted = session.scalars(select(Event).where(Event.message_id == message_id)).one()
        published = accepted.at + timedelta(milliseconds=5)
        session.add(
            Event(
                message_id=message_id, stage="dispatched", at=published + timedelta(milliseconds=3)
            )
        )
        session.flush()
        session.add(Event(message_id=message_id, stage="queued", at=published))
    shown = client.get(f"/v1/messages/{message_id}", headers=auth(tenant)).get_json()
    assert [event["stage"] for event in shown["events"]] == ["accepted", "queued", "dispatched"]
