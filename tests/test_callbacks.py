"""Status callbacks: a settled message's final status reaches its receiver, signed and reliably.

The receiver is a local HTTP server that verifies every request with the `standardwebhooks`
package, as an app would, and answers what it is told to; the store, the web worker and the
callbacks service are the real ones.
"""

from __future__ import annotations

import ipaddress
import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, select
from standardwebhooks.webhooks import Webhook

from channels.web import WebChannel
from channels.worker import channel_context
from dispatcher.callbacks import CallbackSender, backoff
from producer_api.api_keys import NewApp
from shared.ids import new_id, utcnow
from shared.models import Callback, Event, Message
from shared.outbound import OutboundPolicy
from shared.outbox import callback_secret, claim_due, enqueue_callbacks
from shared.pipeline_metrics import CallbackMetrics
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import new_tenant, service_env
from tests.queued import queued_delivery, running_worker
from tests.stack import run_omnipush, wait_until

LOOPBACK = OutboundPolicy(allow=(ipaddress.ip_network("127.0.0.1/32"),))
QUICK = {"base_delay": timedelta(milliseconds=100), "poll_seconds": 0.05}


@dataclass
class Receiver:
    """An app's callback endpoint: answers `statuses` in turn (then 200), keeps what came."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    def verified(self, secret: str) -> list[Any]:
        """Each request's body, verified as Standard Webhooks says (raises if one is not)."""
        return [Webhook(secret).verify(body, headers) for headers, body in self.received]


@contextmanager
def receiver(statuses: list[int] | None = None) -> Iterator[Receiver]:
    state = Receiver(statuses=list(statuses or []))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(state.statuses.pop(0) if state.statuses else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/omnipush"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def sending(runtime: Runtime, **options: Any) -> Iterator[CallbackSender]:
    sender = CallbackSender(runtime, **{"policy": LOOPBACK, **QUICK, **options})
    thread = threading.Thread(target=sender.run, daemon=True)
    thread.start()
    try:
        yield sender
    finally:
        sender.stop()
        thread.join(20)


def dispatched_to_gina(runtime: Runtime, tenant: NewApp, callback_url: str | None) -> str:
    """A dispatched message with one queued web delivery, published to the web worker."""
    message_id, _delivery_id = queued_delivery(
        runtime,
        app_id=tenant.app_id,
        content={"title": "Order shipped"},
        callback_url=callback_url,
    )
    return message_id


def settled(runtime: Runtime, tenant: NewApp, callback_url: str) -> str:
    """A message settled as failed just now, with its callback written as the worker does."""
    now = utcnow()
    message_id = new_id("msg")
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(Message),
            {
                "id": message_id,
                "app_id": tenant.app_id,
                "status": "failed",
                "recipients": [{"user_id": "gina"}],
                "channels": ["web"],
                "content": {"title": "Order shipped"},
                "callback_url": callback_url,
                "created_at": now,
                "updated_at": now,
            },
        )
        assert enqueue_callbacks(connection, [message_id], now) == 1
    return message_id


def trace(runtime: Runtime, message_id: str) -> list[tuple[str, dict[str, Any]]]:
    with runtime.engine.connect() as connection:
        rows = connection.execute(
            select(Event.stage, Event.detail)
            .where(Event.message_id == message_id)
            .order_by(Event.id)
        )
        return [(stage, detail) for stage, detail in rows]


def callback_stages(runtime: Runtime, message_id: str) -> list[str]:
    return [s for s, _d in trace(runtime, message_id) if s.startswith("callback_")]


def test_a_completed_message_posts_its_signed_status_and_is_retried_after_a_500(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    tenant = new_tenant(runtime)
    secret = callback_secret(runtime.settings.secret_key, tenant.app_id)
    web = WebChannel(channel_context(runtime, "web"))
    with receiver([500]) as app, running_worker(runtime, web), sending(runtime):
        message_id = dispatched_to_gina(runtime, tenant, app.url)
        wait_until(
            lambda: "callback_sent" in callback_stages(runtime, message_id), 20, "the callback"
        )
    first, second = app.verified(secret)
    assert first == second
    assert first["type"] == "message.completed"
    assert first["data"] == {"id": message_id, "status": "completed", "deliveries": {"sent": 1}}
    # The retry is the same notification: the receiver can tell by its webhook-id.
    assert app.received[0][0]["webhook-id"] == app.received[1][0]["webhook-id"]
    stages = trace(runtime, message_id)
    assert [s for s, _d in stages] == ["sent", "completed", "callback_retrying", "callback_sent"]
    assert stages[2][1]["error"] == "HTTP 500" and stages[2][1]["attempt"] == 1
    assert stages[3][1]["attempt"] == 2


def test_a_message_without_a_callback_url_reports_to_the_apps_default_set_by_the_cli(
    isolated_runtime: Runtime, settings: Settings
) -> None:
    runtime = isolated_runtime
    tenant = new_tenant(runtime)
    env = service_env(settings)
    with receiver() as app:
        refused = run_omnipush("apps", "callback", tenant.app_id, "--url", app.url, env=env)
        assert refused.returncode == 1 and "loopback" in refused.stderr
        env["OMNIPUSH_OUTBOUND_ALLOW"] = "127.0.0.1/32"
        result = run_omnipush("apps", "callback", tenant.app_id, "--url", app.url, env=env)
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)
        assert shown["callback_url"] == app.url and shown["secret"].startswith("whsec_")
        web = WebChannel(channel_context(runtime, "web"))
        with running_worker(runtime, web), sending(runtime):
            message_id = dispatched_to_gina(runtime, tenant, None)
            wait_until(lambda: app.received, 20, "the callback")
    (body,) = app.verified(shown["secret"])
    assert body["data"]["id"] == message_id


def test_a_callback_to_a_private_address_is_refused_without_the_allow_list(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    tenant = new_tenant(runtime)
    with receiver() as app, sending(runtime, policy=OutboundPolicy()):
        message_id = settled(runtime, tenant, app.url)
        wait_until(lambda: callback_stages(runtime, message_id), 20, "the callback's end")
    assert app.received == []
    ((stage, detail),) = [
        (s, d) for s, d in trace(runtime, message_id) if s.startswith("callback_")
    ]
    assert stage == "callback_failed" and detail["attempt"] == 1
    assert "loopback" in detail["error"]


def test_a_receiver_that_keeps_failing_is_given_up_on_after_the_last_attempt(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    tenant = new_tenant(runtime)
    registry = CollectorRegistry()
    metrics = CallbackMetrics(registry)
    with receiver([500, 503, 500, 500]) as app, sending(runtime, max_attempts=3, metrics=metrics):
        message_id = settled(runtime, tenant, app.url)
        wait_until(
            lambda: "callback_failed" in callback_stages(runtime, message_id), 20, "giving up"
        )
    assert callback_stages(runtime, message_id) == [
        "callback_retrying",
        "callback_retrying",
        "callback_failed",
    ]
    assert len(app.received) == 3
    # At least: the store is shared with other tests, whose callbacks this sender may take too.
    counted = registry.get_sample_value
    assert (counted("omnipush_callbacks_total", {"outcome": "retrying"}) or 0) >= 2
    assert (counted("omnipush_callbacks_total", {"outcome": "failed"}) or 0) >= 1


def test_a_callback_taken_by_a_sender_that_died_is_sent_by_the_next_one(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    tenant = new_tenant(runtime)
    with receiver() as app:
        message_id = settled(runtime, tenant, app.url)
        # A sender takes it and dies before its POST: the lease is all that is left of it.
        with runtime.engine.begin() as connection:
            (taken,) = claim_due(connection, utcnow(), 10, timedelta(seconds=1))
        with sending(runtime):
            wait_until(lambda: app.received, 20, "the callback after the lease")
    assert len(app.received) == 1
    assert app.received[0][0]["webhook-id"] == taken.id
    with runtime.engine.connect() as connection:
        status, attempts = connection.execute(
            select(Callback.status, Callback.attempts).where(Callback.id == taken.id)
        ).one()
    assert (status, attempts) == ("sent", 2)
    assert trace(runtime, message_id)[-1][1]["attempt"] == 2


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 2.5, 5.0), (2, 5.0, 10.0), (4, 20.0, 40.0), (12, 1800.0, 3600.0)],
    ids=["first", "doubled", "doubled-again", "capped"],
)
def test_the_back_off_doubles_up_to_its_cap_with_jitter_below(
    attempt: int, low: float, high: float
) -> None:
    chooser = random.Random(7)
    waits = [
        backoff(attempt, timedelta(seconds=5), timedelta(hours=1), chooser).total_seconds()
        for _ in range(200)
    ]
    assert all(low <= wait <= high for wait in waits)
    assert max(waits) - min(waits) > (high - low) / 2  # jittered, not fixed


def test_a_message_canceled_before_dispatch_gets_its_callback_too(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    send_at = (utcnow() + timedelta(hours=1)).isoformat()
    body = {
        "to": [{"user_id": "gina"}],
        "channels": ["web"],
        "content": {"title": "Sale tomorrow"},
        "send_at": send_at,
        "callback_url": "https://shop.example/hooks/omnipush",
    }
    headers = {"Authorization": f"Bearer {tenant.api_key}"}
    message_id = client.post("/v1/messages", json=body, headers=headers).get_json()["id"]
    assert client.delete(f"/v1/messages/{message_id}", headers=headers).status_code == 200
    with runtime.engine.connect() as connection:
        (row,) = connection.execute(select(Callback).where(Callback.message_id == message_id))
    assert (row.url, row.status) == ("https://shop.example/hooks/omnipush", "pending")
    assert row.payload["type"] == "message.canceled"
    assert row.payload["data"] == {"id": message_id, "status": "canceled", "deliveries": {}}
