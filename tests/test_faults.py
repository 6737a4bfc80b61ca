"""Crash tests: a service SIGKILLed at a known point loses nothing and shows nothing twice.

The module's stack runs its relay and dispatcher against RabbitMQ, and its web worker against
Redis, each through a proxy of its own. A test makes its victim's proxy withhold the answer the
victim waits for, freezes the victim there (SIGSTOP), checks in the store and the broker that
the work in flight is what it should be, kills it (SIGKILL), and starts a new one behind a new
proxy that holds nothing. A browser connected throughout must then have every notification once.
On that stack the web worker sends every web delivery (`OMNIPUSH_WEB_SENDS=worker`), so that
each hop of the queue path can be crashed; the dispatcher's own sends (the default) are crashed
on a stack of their own, its dispatcher talking to Redis through the proxy.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy import Row, func, select

from channels.worker import CLAIM_SECONDS
from producer_api.api_keys import NewApp
from shared.models import Delivery, Event, Message, OutboxEntry
from shared.runtime import Runtime
from shared.tokens import mint_browser_token
from tests.conftest import (
    AMQP_PORT,
    REDIS_PORT,
    WEB_SENDS_BY_WORKER,
    StackBuilder,
    amqp_url_via,
    isolated_settings,
    new_tenant,
    queue_depth,
    redis_url_via,
    service_env,
)
from tests.fault_proxy import (
    FaultProxy,
    Framing,
    amqp_frames,
    is_publisher_confirm,
    whole_chunks,
)
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
        """`count` messages to the user in one batch request, each its own (numbered, so that
        content dedup lets every one through); their ids."""
        response = httpx.post(
            f"{self.stack.api_url}/v1/messages/batch",
            headers={"Authorization": f"Bearer {self.tenant.api_key}"},
            json={
                "messages": [
                    {
                        "to": [{"user_id": USER}],
                        "channels": ["web"],
                        "content": {"title": f"{title} {i}"},
                    }
                    for i in range(count)
                ]
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

    def frozen_claims(self) -> dict[str, datetime]:
        """With the sender frozen mid-send: its claimed deliveries, each with when it was
        claimed, checked to have no outcome recorded and to show in the browser once at most
        (only the emits' answers were withheld: the feed may have them already)."""
        claimed = {
            d: row.updated_at for d, row in self.deliveries().items() if row.status == "sending"
        }
        assert claimed, "no delivery claimed"
        assert set(self.statuses()) <= {"queued", "sending"}, "an outcome was recorded"
        shown = [n["id"] for n in self.browser.notifications]
        assert len(shown) == len(set(shown)) and set(shown) <= set(claimed)
        return claimed

    def taken_over_once_stale(self, claimed: dict[str, datetime]) -> None:
        """Each of the `claimed` deliveries was attempted again, by another worker, only once
        its claim had gone stale, never from a live one."""
        after = self.deliveries()
        for delivery_id, claimed_at in claimed.items():
            assert after[delivery_id].attempts == 2, "the stale claim was not attempted again"
            sent_at = after[delivery_id].sent_at
            assert sent_at is not None and sent_at >= claimed_at + timedelta(seconds=CLAIM_SECONDS)

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


#: Each victim: the port its proxy stands in front of, how the proxy splits what comes back,
#: and the variable that sends the victim through the proxy.
VICTIMS: dict[str, tuple[int, Framing, str, Callable[[FaultProxy], str]]] = {
    "relay": (AMQP_PORT, amqp_frames, "OMNIPUSH_AMQP_URL", amqp_url_via),
    "dispatcher": (AMQP_PORT, amqp_frames, "OMNIPUSH_AMQP_URL", amqp_url_via),
    "worker-web": (REDIS_PORT, whole_chunks, "OMNIPUSH_REDIS_URL", redis_url_via),
}


@dataclass
class CrashStack:
    """A stack whose victims each talk to RabbitMQ or Redis through the proxy of its name."""

    stack: Stack
    runtime: Runtime
    proxies: dict[str, FaultProxy] = field(default_factory=dict)

    def through_new_proxy(self, victim: str) -> dict[str, str]:
        """The environment that sends `victim` through a new proxy (which replaces its last)."""
        port, framing, variable, url_via = VICTIMS[victim]
        if victim in self.proxies:
            self.proxies[victim].close()
        self.proxies[victim] = FaultProxy("127.0.0.1", port, framing=framing).start()
        return {variable: url_via(self.proxies[victim])}

    def start_again(self, name: str) -> None:
        """Kill `name` if it still runs and start a new one (a victim behind a new proxy)."""
        self.stack.kill(name)
        self.stack.start(name, self.through_new_proxy(name) if name in VICTIMS else None)


@pytest.fixture(scope="module")
def crash_stack() -> Iterator[CrashStack]:
    with isolated_settings() as settings:
        env = service_env(settings) | WEB_SENDS_BY_WORKER
        crash = CrashStack(Stack(settings=settings, env=env), Runtime.build(settings))
        try:
            crash.stack.start_all({name: crash.through_new_proxy(name) for name in VICTIMS})
            yield crash
        finally:
            crash.runtime.close()
            crash.stack.stop_all()
            for proxy in crash.proxies.values():
                proxy.close()


def connected_scene(stack: Stack, runtime: Runtime) -> Scene:
    """A new app on `stack` and its user's connected browser."""
    tenant = new_tenant(runtime)
    token, _ = mint_browser_token(stack.settings.secret_key, tenant.app_id, USER, 600)
    return Scene(stack, runtime, tenant, InboxClient(stack.gateway_url, token).connect())


@pytest.fixture
def scene(crash_stack: CrashStack) -> Iterator[Scene]:
    """A new app and its user's browser on the module's stack. A service the test left frozen
    or dead (a test that failed half-way) is started again, behind a new proxy if it is a
    victim, so the next test finds the stack as the first one did."""
    stack, runtime = crash_stack.stack, crash_stack.runtime
    scene = connected_scene(stack, runtime)
    yield scene
    scene.browser.close()
    for name, service in list(stack.services.items()):
        if not service.working():
            crash_stack.start_again(name)


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
    crash_stack: CrashStack, scene: Scene
) -> None:
    crash_stack.proxies["relay"].withhold_replies(from_piece=is_publisher_confirm)
    message_ids = scene.post(MESSAGES, "relayed")
    # Published (the dispatcher and worker passed them on), but never confirmed to the relay.
    scene.browser.wait_for(MESSAGES)
    scene.stack.services["relay"].freeze()
    rows = outbox_rows(scene.runtime, message_ids)
    assert len(rows) == MESSAGES
    assert all(published is None for published in rows.values()), "rows marked unconfirmed"
    assert locked_rows(scene.runtime, set(rows)) == set(rows), "the relay did not hold its rows"
    scene.stack.kill("relay")

    crash_stack.start_again("relay")
    wait_until(
        lambda: None not in outbox_rows(scene.runtime, message_ids).values(),
        30,
        "the next relay to publish and mark every row",
    )
    scene.shows_everything_once(message_ids)


def test_a_dispatcher_killed_before_acking_a_dispatched_batch_adds_nothing_the_second_time(
    crash_stack: CrashStack, scene: Scene
) -> None:
    crash_stack.proxies["dispatcher"].withhold_replies(from_piece=is_publisher_confirm)
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

    crash_stack.start_again("dispatcher")
    scene.shows_everything_once(message_ids)


def test_a_worker_killed_mid_send_leaves_its_claim_to_go_stale_and_the_next_worker_sends(
    crash_stack: CrashStack, scene: Scene
) -> None:
    crash_stack.proxies[
        "worker-web"
    ].withhold_replies()  # the web channel's emit never gets its answer
    message_ids = scene.post(MESSAGES, "claimed")
    wait_until(lambda: scene.statuses()["sending"], 15, "the worker to claim deliveries")
    scene.stack.services["worker-web"].freeze()
    claimed = scene.frozen_claims()
    scene.stack.kill("worker-web")
    web_queue = scene.runtime.topology.channel_queue("web")
    wait_until(
        lambda: queue_depth(web_queue) == MESSAGES, 30, "every delivery requeued, none acked"
    )

    crash_stack.start_again("worker-web")
    scene.shows_everything_once(message_ids)
    scene.taken_over_once_stale(claimed)


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


#: A reply of the web channel's emit script: [appended, the feed entry's position].
_EMIT_REPLY = re.compile(rb"\*2\r\n:[01]\r\n\$\d+\r\n\d+-\d+\r\n")


def is_emit_reply(piece: bytes) -> bool:
    return _EMIT_REPLY.search(piece) is not None


@pytest.fixture
def sending_dispatcher(isolated_stack: StackBuilder) -> Iterator[tuple[Scene, FaultProxy]]:
    """A stack of its own whose dispatcher sends web deliveries itself (the default), talking
    to Redis through a proxy, with an app and its user's connected browser."""
    with FaultProxy("127.0.0.1", REDIS_PORT) as proxy:
        stack = isolated_stack(env_of={"dispatcher": {"OMNIPUSH_REDIS_URL": redis_url_via(proxy)}})
        runtime = Runtime.build(stack.settings)
        scene = connected_scene(stack, runtime)
        yield scene, proxy
        scene.browser.close()
        runtime.close()


def test_a_dispatcher_killed_mid_send_leaves_its_web_deliveries_to_the_web_worker_once(
    sending_dispatcher: tuple[Scene, FaultProxy],
) -> None:
    scene, proxy = sending_dispatcher
    proxy.withhold_replies(from_piece=is_emit_reply)  # its emits never get their answer
    message_ids = scene.post(MESSAGES, "sent by the dispatcher")
    wait_until(lambda: scene.statuses()["sending"], 15, "the dispatcher to claim deliveries")
    scene.stack.services["dispatcher"].freeze()
    claimed = scene.frozen_claims()
    scene.stack.kill("dispatcher")
    dispatch_queue = scene.runtime.topology.dispatch_queue
    wait_until(lambda: queue_depth(dispatch_queue) == MESSAGES, 30, "every source requeued")

    scene.stack.start("dispatcher")  # straight to Redis this time
    scene.shows_everything_once(message_ids)
    # The web worker took each over, the dispatcher's claim having gone stale.
    scene.taken_over_once_stale(claimed)
