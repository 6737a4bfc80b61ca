"""The walking skeleton end to end: REST in, a browser's Socket.IO inbox out, the trace kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from producer_api.api_keys import NewApp
from shared.ids import utcnow
from shared.migrate import upgrade
from shared.runtime import Runtime
from shared.settings import Settings
from shared.tokens import mint_browser_token
from tests.conftest import AMQP_URL, REDIS_URL, new_tenant, queue_prefix, service_env
from tests.inbox_client import InboxClient
from tests.stack import Stack, free_port, run_omnipush, wait_until


@pytest.fixture
def api(stack: Stack, tenant: NewApp) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {tenant.api_key}"}, timeout=10
    ) as client:
        yield client


def browser(stack: Stack, tenant: NewApp, user_id: str) -> InboxClient:
    token, _ = mint_browser_token(stack.settings.secret_key, tenant.app_id, user_id, 600)
    return InboxClient(stack.gateway_url, token)


def send(api: httpx.Client, user_id: str, title: str) -> str:
    response = api.post(
        "/v1/messages",
        json={"to": [{"user_id": user_id}], "channels": ["web"], "content": {"title": title}},
    )
    assert response.status_code == 202, response.text
    assert response.headers["Location"].endswith(response.json()["id"])
    message_id: str = response.json()["id"]
    return message_id


def message(api: httpx.Client, message_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/messages/{message_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def stages(api: httpx.Client, message_id: str) -> list[str]:
    return [event["stage"] for event in message(api, message_id)["events"]]


def test_a_connected_browser_sees_the_message_at_once_and_the_trace_follows_it(
    stack: Stack, tenant: NewApp, api: httpx.Client
) -> None:
    tab = browser(stack, tenant, "alice").connect()
    other_tab = browser(stack, tenant, "alice").connect()
    try:
        message_id = send(api, "alice", "Order shipped")
        (notification,) = tab.wait_for(1)
        assert notification["message_id"] == message_id
        assert notification["title"] == "Order shipped"
        wait_until(lambda: message(api, message_id)["status"] == "completed", 10, "completed")
        shown = message(api, message_id)
        (delivery,) = shown["deliveries"]
        assert (delivery["id"], delivery["channel"], delivery["user_id"]) == (
            notification["id"],
            "web",
            "alice",
        )
        assert stages(api, message_id)[:3] == ["accepted", "queued", "dispatched"]

        tab.ack([notification["id"]])
        wait_until(lambda: "delivered" in stages(api, message_id), 10, "the delivered event")
        tab.read([notification["id"]])
        wait_until(lambda: "read" in stages(api, message_id), 10, "the read event")
        assert message(api, message_id)["deliveries"][0]["status"] == "read"
        # Both tabs of the user get the new unread count.
        wait_until(lambda: other_tab.unread_counts[-1:] == [0], 10, "unread_count 0 on tab 2")
        assert tab.unread_counts[-1] == 0
    finally:
        tab.close()
        other_tab.close()


def test_an_offline_user_gets_everything_unacknowledged_oldest_first_and_only_once(
    stack: Stack, tenant: NewApp, api: httpx.Client
) -> None:
    ids = [send(api, "bob", f"note {n}") for n in range(3)]
    wait_until(lambda: all(message(api, m)["status"] == "completed" for m in ids), 15, "all sent")

    first = browser(stack, tenant, "bob").connect()
    try:
        replayed = first.wait_for(3)
        assert [n["message_id"] for n in replayed] == ids
        assert first.unread_counts[0] == 3
        first.ack([replayed[0]["id"], replayed[1]["id"]])
        wait_until(lambda: stages(api, ids[1]).count("delivered") == 1, 10, "acks recorded")
    finally:
        first.close()

    again = browser(stack, tenant, "bob").connect()
    try:
        assert [n["message_id"] for n in again.notifications] == [ids[2]]
        # Acknowledged is not read: all three are still unread.
        assert again.unread_counts[0] == 3
    finally:
        again.close()


def test_a_browser_never_sees_another_users_or_apps_notifications(
    stack: Stack, tenant: NewApp, api: httpx.Client, runtime: Any
) -> None:
    other_app = new_tenant(runtime)
    carol = browser(stack, tenant, "carol").connect()
    carol_elsewhere = browser(stack, other_app, "carol").connect()
    try:
        send(api, "dave", "for dave")
        mine = send(api, "carol", "for carol")
        carol.wait_for(1)
        wait_until(lambda: message(api, mine)["status"] == "completed", 10, "completed")
        assert [n["message_id"] for n in carol.notifications] == [mine]
        assert carol_elsewhere.notifications == []
    finally:
        carol.close()
        carol_elsewhere.close()


def test_a_scheduled_message_waits_for_its_time_then_reaches_the_browser(
    stack: Stack, tenant: NewApp, api: httpx.Client
) -> None:
    tab = browser(stack, tenant, "erin").connect()
    try:
        send_at = utcnow() + timedelta(seconds=2)
        response = api.post(
            "/v1/messages",
            json={
                "to": [{"user_id": "erin"}],
                "channels": ["web"],
                "content": {"title": "later"},
                "send_at": send_at.isoformat(),
            },
        )
        assert response.json()["status"] == "scheduled", response.text
        (notification,) = tab.wait_for(1)
        assert utcnow() >= send_at, "delivered before its send_at"
        assert notification["message_id"] == response.json()["id"]
        wait_until(lambda: "dispatched" in stages(api, notification["message_id"]), 10, "trace")
        assert stages(api, notification["message_id"])[:3] == ["scheduled", "queued", "dispatched"]
    finally:
        tab.close()


def test_the_default_sqlite_store_carries_a_message_end_to_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/var/omnipush.db"
    upgrade(url)
    with queue_prefix() as prefix:
        settings = Settings(
            database_url=url,
            amqp_url=AMQP_URL,
            redis_url=REDIS_URL,
            secret_key="sqlite-test-" + "x" * 32,
            queue_prefix=prefix,
            api_bind=f"127.0.0.1:{free_port()}",
            gateway_bind=f"127.0.0.1:{free_port()}",
        )
        sqlite_stack = Stack(settings=settings, env=service_env(settings))
        runtime = Runtime.build(settings)
        try:
            sqlite_stack.start_all()
            tenant = new_tenant(runtime)
            inbox = browser(sqlite_stack, tenant, "frank").connect()
            with httpx.Client(
                base_url=sqlite_stack.api_url,
                headers={"Authorization": f"Bearer {tenant.api_key}"},
                timeout=10,
            ) as client:
                message_id = send(client, "frank", "on sqlite")
                (notification,) = inbox.wait_for(1)
                assert notification["message_id"] == message_id
                wait_until(
                    lambda: message(client, message_id)["status"] == "completed", 10, "completed"
                )
            inbox.close()
        finally:
            sqlite_stack.stop_all()
            runtime.close()


def test_omnipush_trace_tells_an_operator_what_happened_to_a_message(
    stack: Stack, tenant: NewApp, api: httpx.Client
) -> None:
    message_id = send(api, "henry", "traced")
    wait_until(lambda: message(api, message_id)["status"] == "completed", 10, "completed")
    env = service_env(stack.settings)
    shown = run_omnipush("trace", message_id, env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"message {message_id}  app {tenant.app_id}  status completed")
    assert [line.split()[1] for line in lines[1:6]] == [
        "accepted",
        "queued",
        "dispatched",
        "sent",
        "completed",
    ]
    assert lines[-1].startswith("delivery dlv_") and "user henry  sent  attempts 1" in lines[-1]

    traced = json.loads(run_omnipush("trace", message_id, "--json", env=env).stdout)
    assert traced["message"]["status"] == "completed"
    assert [d["status"] for d in traced["deliveries"]] == ["sent"]

    missing = run_omnipush("trace", "msg_nope", env=env)
    assert missing.returncode == 1
    assert "no message msg_nope" in missing.stderr
