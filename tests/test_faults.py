"""Crash tests: services killed with SIGKILL mid-stream lose nothing and show nothing twice."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import func, select

from shared.models import Delivery, Message
from shared.runtime import Runtime
from shared.tokens import mint_browser_token
from tests.conftest import new_tenant
from tests.inbox_client import InboxClient
from tests.stack import Stack, wait_until

MESSAGES = 500


@pytest.fixture
def crash_stack(isolated_stack: Callable[[], Stack]) -> Iterator[tuple[Stack, Runtime]]:
    stack = isolated_stack()
    runtime = Runtime.build(stack.settings)
    yield stack, runtime
    runtime.close()


def post_all(api_url: str, api_key: str, user_id: str, done: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30) as client:
        for n in range(MESSAGES):
            response = client.post(
                "/v1/messages",
                json={
                    "to": [{"user_id": user_id}],
                    "channels": ["web"],
                    "content": {"title": f"#{n}"},
                },
            )
            assert response.status_code == 202, response.text
    done.set()


def status_counts(runtime: Runtime, app_id: str) -> dict[str, int]:
    with runtime.sessions() as session:
        rows = session.execute(
            select(Delivery.status, func.count())
            .where(Delivery.app_id == app_id)
            .group_by(Delivery.status)
        ).all()
    return {status: count for status, count in rows}


def completed_messages(runtime: Runtime, app_id: str) -> int:
    with runtime.sessions() as session:
        count = session.scalar(
            select(func.count()).where(Message.app_id == app_id, Message.status == "completed")
        )
    return int(count or 0)


def run_with_crash(
    stack: Stack, runtime: Runtime, victims: list[str]
) -> tuple[list[str], dict[str, int]]:
    tenant = new_tenant(runtime)
    token, _ = mint_browser_token(stack.settings.secret_key, tenant.app_id, "crash", 600)
    client = InboxClient(stack.gateway_url, token).connect()
    posted = threading.Event()
    poster = threading.Thread(
        target=post_all, args=(stack.api_url, tenant.api_key, "crash", posted), daemon=True
    )
    try:
        poster.start()
        client.wait_for(MESSAGES // 5, timeout=60)
        for name in victims:
            stack.kill(name)
        for name in victims:
            stack.start(name)
        wait_until(posted.is_set, 120, "all messages posted")
        wait_until(
            lambda: status_counts(runtime, tenant.app_id).get("sent") == MESSAGES,
            120,
            f"{MESSAGES} deliveries sent",
        )
        client.wait_for(MESSAGES, timeout=30)
        assert completed_messages(runtime, tenant.app_id) == MESSAGES
        return client.ids(), status_counts(runtime, tenant.app_id)
    finally:
        client.close()
        poster.join(5)


def test_killing_dispatcher_and_web_worker_mid_stream_delivers_every_message_once(
    crash_stack: tuple[Stack, Runtime],
) -> None:
    stack, runtime = crash_stack
    ids, counts = run_with_crash(stack, runtime, ["dispatcher", "worker-web"])
    assert len(ids) == MESSAGES
    assert len(set(ids)) == MESSAGES, "a notification reached the browser twice"
    assert counts == {"sent": MESSAGES}


def test_killing_the_relay_mid_stream_delivers_every_message_once(
    crash_stack: tuple[Stack, Runtime],
) -> None:
    stack, runtime = crash_stack
    ids, counts = run_with_crash(stack, runtime, ["relay"])
    assert len(ids) == MESSAGES
    assert len(set(ids)) == MESSAGES, "a notification reached the browser twice"
    assert counts == {"sent": MESSAGES}


def close_broker_connection(name_part: str) -> None:
    """Have RabbitMQ close the connection whose client-given name contains `name_part`."""
    listing = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "--quiet"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    pids = [
        line.split("\t", 1)[0]
        for line in listing.splitlines()
        if '{"connection_name","' in line and name_part in line
    ]
    assert len(pids) == 1, f"expected one connection named like {name_part!r}: {pids}"
    subprocess.run(
        ["rabbitmqctl", "close_connection", pids[0], "closed by a test"],
        capture_output=True,
        check=True,
        timeout=60,
    )


def test_a_worker_whose_broker_connection_drops_reconnects_and_keeps_delivering(
    stack: Stack, runtime: Runtime
) -> None:
    tenant = new_tenant(runtime)
    token, _ = mint_browser_token(stack.settings.secret_key, tenant.app_id, "erin", 600)
    client = InboxClient(stack.gateway_url, token).connect()
    worker = stack.services["worker-web"]
    assert worker.process is not None
    try:
        close_broker_connection(
            f"{stack.settings.queue_prefix} worker-web (pid {worker.process.pid})"
        )
        wait_until(lambda: worker.output().count("amqp.ready") >= 2, 30, "the worker to reconnect")
        response = httpx.post(
            f"{stack.api_url}/v1/messages",
            headers={"Authorization": f"Bearer {tenant.api_key}"},
            json={"to": [{"user_id": "erin"}], "channels": ["web"], "content": {"title": "after"}},
        )
        assert response.status_code == 202
        (notification,) = client.wait_for(1)
        assert notification["message_id"] == response.json()["id"]
        assert "amqp.disconnected" in worker.output()
    finally:
        client.close()
