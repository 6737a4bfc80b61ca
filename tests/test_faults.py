"""Crash tests: a service SIGKILLed at a known point loses nothing and shows nothing twice.

Each test stops its victim exactly where work is in flight: a proxy in front of the victim's
RabbitMQ or Redis withholds the answer it waits for, the test freezes it there (SIGSTOP),
checks in the store and the broker that the in-flight state exists, then kills it (SIGKILL) and
starts a new one. A browser connected throughout must then have every notification once.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy import Row, func, select

from dispatcher.worker import CLAIM_SECONDS
from producer_api.api_keys import NewApp
from shared.models import Delivery, Event, Message, OutboxEntry
from shared.runtime import Runtime
from shared.tokens import mint_browser_token
from tests.conftest import amqp_url_via, new_tenant, queue_depth, redis_url_via
from tests.holding_proxy import HoldingProxy, is_publisher_confirm
from tests.inbox_client import InboxClient
from tests.stack import Stack, wait_until

#: Messages in flight at each kill (posted in one batch request: the relay claims them together).
MESSAGES = 50
USER = "crash"
#: id, message_id, status, attempts, updated_at, sent_at
DeliveryRow = Row[str, str, str, int, datetime, datetime | None]


@dataclass
class Scene:
    """A stack of its own, a reader of its store, an app, and its user's connected browser."""

    stack: Stack
    runtime: Runtime
    tenant: NewApp
    browser: InboxClient

    def post(self, count: int, title: str) -> list[str]:
        """`count` messages to the user in one batch request; their ids."""
        response = httpx.post(
            f"{self.stack.api_url}/v1/messages/batch",
            headers={"Authorization": f"Bearer {self.tenant.api_key}"},
            json={
                "messages": [
                    {"to": [{"user_id": USER}], "channels": ["web"], "content": {"title": title}}
                ]
                * count
            },
            timeout=30,
        )
        assert response.status_code == 200 and response.json()["accepted"] == count, response.text
        return [result["id"] for result in response.json()["results"]]

    def deliveries(self) -> dict[str, DeliveryRow]:
        """The app's deliveries by id: message_id, status, attempts, updated_at, sent_at."""
        with self.runtime.sessions() as session:
            rows = session.execute(
                select(
                    Delivery.id,
                    Delivery.message_id,
                    Delivery.status,
                    Delivery.attempts,
                    Delivery.updated_at,
                    Delivery.sent_at,
                ).where(Delivery.app_id == self.tenant.app_id)
            ).all()
        return {row.id: row for row in rows}

    def statuses(self) -> Counter[str]:
        return Counter(row.status for row in self.deliveries().values())

    def shows_everything_once(self, message_ids: list[str]) -> None:
        """Every message completed and in the browser once, with one delivery and one dispatch.

        A last message sent after the others arrives behind any duplicate of theirs: once the
        browser has it, a duplicate would have shown.
        """
        last = self.post(1, "after the crash")
        everything = [*message_ids, *last]
        self.browser.wait_for(len(everything), timeout=60)
        wait_until(lambda: self.statuses() == {"sent": len(everything)}, 30, "every delivery sent")
        shown = [n["message_id"] for n in self.browser.notifications]
        assert sorted(shown) == sorted(everything), "a notification was lost or shown twice"
        with self.runtime.sessions() as session:
            completed = session.scalar(
                select(func.count()).where(
                    Message.app_id == self.tenant.app_id, Message.status == "completed"
                )
            )
            dispatches = session.scalars(
                select(Event.message_id).where(
                    Event.message_id.in_(everything), Event.stage == "dispatched"
                )
            ).all()
        assert completed == len(everything)
        assert sorted(dispatches) == sorted(everything), "a message was dispatched twice"


@pytest.fixture
def scene_of(isolated_stack: Callable[..., Stack]) -> Iterator[Callable[..., Scene]]:
    """Builds the scene; takes `Stack.start_all`'s per-service environment."""
    built: list[Scene] = []

    def build(env_of: Mapping[str, Mapping[str, str]]) -> Scene:
        stack = isolated_stack(env_of)
        runtime = Runtime.build(stack.settings)
        tenant = new_tenant(runtime)
        token, _ = mint_browser_token(stack.settings.secret_key, tenant.app_id, USER, 600)
        scene = Scene(stack, runtime, tenant, InboxClient(stack.gateway_url, token).connect())
        built.append(scene)
        return scene

    yield build
    for scene in built:
        scene.browser.close()
        scene.runtime.close()


def outbox_rows(runtime: Runtime, message_ids: list[str]) -> dict[int, datetime | None]:
    """outbox row id -> when it was marked published, for these messages."""
    with runtime.sessions() as session:
        rows = session.execute(
            select(OutboxEntry.id, OutboxEntry.published_at).where(
                OutboxEntry.message_id.in_(message_ids)
            )
        ).all()
    return {row_id: published for row_id, published in rows}


def locked_rows(runtime: Runtime, row_ids: set[int]) -> set[int]:
    """Of these outbox rows, those another transaction holds locked right now."""
    with runtime.engine.connect() as connection:
        free = connection.scalars(
            select(OutboxEntry.id)
            .where(OutboxEntry.id.in_(row_ids))
            .with_for_update(skip_locked=True)
        ).all()
        connection.rollback()
    return row_ids - set(free)


def test_a_relay_killed_before_the_broker_confirmed_its_rows_leaves_them_to_the_next_relay(
    broker_proxy: HoldingProxy, scene_of: Callable[..., Scene]
) -> None:
    scene = scene_of({"relay": {"OMNIPUSH_AMQP_URL": amqp_url_via(broker_proxy)}})
    broker_proxy.hold(from_piece=is_publisher_confirm)
    message_ids = scene.post(MESSAGES, "relayed")
    # Published (the dispatcher and worker passed them on), but never confirmed to the relay.
    scene.browser.wait_for(MESSAGES)
    scene.stack.services["relay"].freeze()
    rows = outbox_rows(scene.runtime, message_ids)
    assert len(rows) == MESSAGES
    assert all(published is None for published in rows.values()), "rows marked unconfirmed"
    assert locked_rows(scene.runtime, set(rows)) == set(rows), "the relay did not hold its rows"
    scene.stack.kill("relay")

    scene.stack.start("relay")
    wait_until(
        lambda: None not in outbox_rows(scene.runtime, message_ids).values(),
        30,
        "the next relay to publish and mark every row",
    )
    scene.shows_everything_once(message_ids)


def test_a_dispatcher_killed_before_acking_a_dispatched_batch_adds_nothing_the_second_time(
    broker_proxy: HoldingProxy, scene_of: Callable[..., Scene]
) -> None:
    scene = scene_of({"dispatcher": {"OMNIPUSH_AMQP_URL": amqp_url_via(broker_proxy)}})
    broker_proxy.hold(from_piece=is_publisher_confirm)
    message_ids = scene.post(MESSAGES, "dispatched")
    # A first batch is written and published (the browser has some of it), never confirmed.
    scene.browser.wait_for(1)
    scene.stack.services["dispatcher"].freeze()
    written = {row.message_id for row in scene.deliveries().values()}
    assert {n["message_id"] for n in scene.browser.notifications} <= written
    scene.stack.kill("dispatcher")
    # Not one source was acked: every message is back in the dispatch queue.
    dispatch_queue = scene.runtime.topology.dispatch_queue
    wait_until(lambda: queue_depth(dispatch_queue) == MESSAGES, 30, "every source message requeued")

    scene.stack.start("dispatcher")
    scene.shows_everything_once(message_ids)


def test_a_worker_killed_mid_send_leaves_its_claim_to_go_stale_and_the_next_worker_sends(
    redis_proxy: HoldingProxy, scene_of: Callable[..., Scene]
) -> None:
    scene = scene_of({"worker-web": {"OMNIPUSH_REDIS_URL": redis_url_via(redis_proxy)}})
    redis_proxy.hold()  # the web channel's emit never gets its answer
    message_ids = scene.post(MESSAGES, "claimed")
    wait_until(lambda: scene.statuses()["sending"], 15, "the worker to claim deliveries")
    scene.stack.services["worker-web"].freeze()
    claimed = {
        d: row.updated_at for d, row in scene.deliveries().items() if row.status == "sending"
    }
    assert claimed, "no delivery claimed"
    assert set(scene.statuses()) <= {"queued", "sending"}, "an outcome was recorded"
    assert scene.browser.notifications == []
    scene.stack.kill("worker-web")
    web_queue = scene.runtime.topology.channel_queue("web")
    wait_until(
        lambda: queue_depth(web_queue) == MESSAGES, 30, "every delivery requeued, none acked"
    )

    scene.stack.start("worker-web")
    scene.shows_everything_once(message_ids)
    after = scene.deliveries()
    for delivery_id, claimed_at in claimed.items():
        assert after[delivery_id].attempts == 2, "the stale claim was not attempted again"
        # Taken over only once the claim had gone stale, never from a live worker.
        sent_at = after[delivery_id].sent_at
        assert sent_at is not None and sent_at >= claimed_at + timedelta(seconds=CLAIM_SECONDS)


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
