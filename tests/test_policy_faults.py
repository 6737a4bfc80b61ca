"""The dispatcher's Redis stages while Redis cannot be reached, through real services.

The module's stack (api, relay, web worker, gateway) talks to Redis directly; each test starts
its own dispatcher whose `OMNIPUSH_REDIS_URL` is a `FaultProxy` the test owns, and makes Redis
unreachable through it for a while, with messages coming in. By default the dispatcher sends
nothing it cannot check: those messages wait in the broker, and once Redis is back they are
dispatched and shown once each, with dedup still holding. An operator who lists the stages in
`[policy] fail_open` gets everything delivered unchecked meanwhile, said once.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select

from producer_api.api_keys import NewApp
from shared.amqp.link import AmqpLink, Outgoing
from shared.amqp.topology import DISPATCH_KEY
from shared.ids import new_id, utcnow
from shared.models import Delivery, Message
from shared.payloads import DispatchPayload, encode
from shared.runtime import Runtime
from shared.tokens import mint_browser_token
from tests.conftest import (
    AMQP_URL,
    REDIS_PORT,
    isolated_settings,
    new_tenant,
    queue_depth,
    redis_url_via,
    service_env,
)
from tests.fault_proxy import FaultProxy
from tests.inbox_client import InboxClient
from tests.stack import Service, Stack, wait_until

USER = "kim"
SETTLE_SECONDS = 30.0
#: The consumer's back-off doubles from a second: an outage of a few seconds ends within this.
RECOVERY_SECONDS = 45.0
FAIL_OPEN = '[policy]\nfail_open = ["dedup", "frequency_cap"]\n'


@pytest.fixture(scope="module")
def redisless_stack() -> Iterator[tuple[Stack, Runtime]]:
    """Every service but the dispatcher, on a store and queues of their own."""
    with isolated_settings() as settings:
        stack = Stack(settings=settings, env=service_env(settings))
        runtime = Runtime.build(settings)
        try:
            for name in ("api", "relay", "worker-web", "gateway"):
                stack.start(name)
            yield stack, runtime
        finally:
            stack.stop_all()
            runtime.close()


@dataclass
class Outage:
    """A dispatcher behind a Redis proxy, an app, and its user's connected browser."""

    stack: Stack
    runtime: Runtime
    proxy: FaultProxy
    dispatcher: Service
    tenant: NewApp
    browser: InboxClient

    def post(self, *titles: str, category: str = "notification") -> list[str]:
        """One message per title to the user on web, in one request; their ids."""
        response = httpx.post(
            f"{self.stack.api_url}/v1/messages/batch",
            headers={"Authorization": f"Bearer {self.tenant.api_key}"},
            json={
                "messages": [
                    {
                        "to": [{"user_id": USER}],
                        "channels": ["web"],
                        "category": category,
                        "content": {"title": title},
                    }
                    for title in titles
                ]
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == len(titles), response.text
        return [result["id"] for result in response.json()["results"]]

    def redis_away(self) -> None:
        """Redis unreachable from the dispatcher: new connections closed, open ones cut."""
        self.proxy.refuse()
        self.proxy.drop()

    def statuses(self, message_ids: list[str]) -> dict[str, str]:
        with self.runtime.engine.connect() as connection:
            rows = connection.execute(
                select(Message.id, Message.status).where(Message.id.in_(message_ids))
            ).all()
        return {message_id: status for message_id, status in rows}

    def delivery_statuses(self, message_ids: list[str]) -> dict[str, str]:
        with self.runtime.engine.connect() as connection:
            rows = connection.execute(
                select(Delivery.message_id, Delivery.status).where(
                    Delivery.message_id.in_(message_ids)
                )
            ).all()
        return {message_id: status for message_id, status in rows}

    def written(self) -> int:
        """How many deliveries the app has."""
        with self.runtime.engine.connect() as connection:
            count = connection.scalar(
                select(func.count()).where(Delivery.app_id == self.tenant.app_id)
            )
        return int(count or 0)

    def shown(self) -> list[str]:
        """The message ids of the notifications the browser has, in the order they came."""
        return [n["message_id"] for n in self.browser.notifications]

    def logged(self, event: str) -> list[dict[str, Any]]:
        """The dispatcher's log lines of `event`."""
        return [
            json.loads(line)
            for line in self.dispatcher.output().splitlines()
            if f'"{event}"' in line
        ]


@contextmanager
def outage_scene(
    redisless_stack: tuple[Stack, Runtime], config: Path | None = None
) -> Iterator[Outage]:
    """A dispatcher of its own behind a Redis proxy (with `config` as its `OMNIPUSH_CONFIG`),
    a new app and its user's browser."""
    stack, runtime = redisless_stack
    env = {} if config is None else {"OMNIPUSH_CONFIG": str(config)}
    tenant = new_tenant(runtime)
    token, _ = mint_browser_token(stack.settings.secret_key, tenant.app_id, USER, 600)
    with FaultProxy("127.0.0.1", REDIS_PORT) as proxy:
        env["OMNIPUSH_REDIS_URL"] = redis_url_via(proxy)
        dispatcher = stack.start("dispatcher", env)
        try:
            browser = InboxClient(stack.gateway_url, token).connect()
            try:
                yield Outage(stack, runtime, proxy, dispatcher, tenant, browser)
            finally:
                browser.close()
        finally:
            dispatcher.stop()


@pytest.fixture
def outage(redisless_stack: tuple[Stack, Runtime]) -> Iterator[Outage]:
    """The operator's defaults: the Redis stages hold the dispatcher while Redis is away."""
    with outage_scene(redisless_stack) as scene:
        yield scene


@pytest.fixture
def fail_open_outage(redisless_stack: tuple[Stack, Runtime], tmp_path: Path) -> Iterator[Outage]:
    """An operator who lets both Redis stages through unchecked while Redis is away."""
    config = tmp_path / "omnipush.toml"
    config.write_text(FAIL_OPEN)
    with outage_scene(redisless_stack, config) as scene:
        yield scene


def messages_in_broker(queue: str) -> int:
    """How many messages `queue` holds, ready or delivered and not yet acked."""
    listing = subprocess.run(
        ["rabbitmqctl", "list_queues", "--quiet", "--no-table-headers", "name", "messages"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for line in listing.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"no queue {queue}")


def test_while_redis_is_away_nothing_is_dispatched_and_once_back_all_is_shown_once(
    outage: Outage,
) -> None:
    (before,) = outage.post("Your parcel is out")
    wait_until(lambda: outage.shown() == [before], SETTLE_SECONDS, "the first notification")

    outage.redis_away()
    away = outage.post(
        "Your parcel is out", "Parcel delivered", "Rate your driver", "Parcel delivered"
    )
    outage.dispatcher.wait_for_log("consumer.dependency_unavailable", SETTLE_SECONDS)
    queue = outage.runtime.topology.dispatch_queue
    wait_until(
        lambda: set(outage.statuses(away).values()) == {"queued"},
        SETTLE_SECONDS,
        "the relay to hand every message to the broker",
    )
    # Tried again (through the proxy) and still nothing: the messages wait in the broker.
    tried = outage.proxy.accepted
    wait_until(lambda: outage.proxy.accepted > tried, RECOVERY_SECONDS, "another try at Redis")
    # The broker's counts of a quorum queue lag a little behind.
    wait_until(
        lambda: messages_in_broker(queue) == len(away),
        SETTLE_SECONDS,
        "the broker to hold them",
        interval=0.5,
    )
    assert outage.written() == 1, "deliveries were written without Redis"
    assert outage.shown() == [before]

    outage.proxy.resume()
    outage.dispatcher.wait_for_log("consumer.dependency_back", RECOVERY_SECONDS)
    (last,) = outage.post("Anything else?")
    wait_until(lambda: last in outage.shown(), SETTLE_SECONDS, "the notification after")
    # The same parcel message again, and the second "delivered", were deduplicated.
    again, delivered, rate, delivered_again = away
    assert sorted(outage.shown()) == sorted([before, delivered, rate, last])
    assert outage.delivery_statuses(away) == {
        again: "deduplicated",
        delivered: "sent",
        rate: "sent",
        delivered_again: "deduplicated",
    }
    everything = [before, *away, last]
    wait_until(
        lambda: set(outage.statuses(everything).values()) == {"completed"},
        SETTLE_SECONDS,
        "every message completed",
    )
    wait_until(
        lambda: messages_in_broker(queue) == 0, SETTLE_SECONDS, "every message acked", interval=0.5
    )
    assert len(outage.logged("consumer.dependency_unavailable")) == 1
    assert len(outage.logged("consumer.dependency_back")) == 1
    dispatched = Counter(line["message_id"] for line in outage.logged("dispatch.message"))
    assert dispatched == dict.fromkeys(everything, 1)
    assert not outage.logged("policy.unchecked")


def test_with_fail_open_everything_is_delivered_unchecked_while_redis_is_away(
    fail_open_outage: Outage,
) -> None:
    outage = fail_open_outage
    response = httpx.put(
        f"{outage.stack.api_url}/v1/policy",
        headers={"Authorization": f"Bearer {outage.tenant.api_key}"},
        json={"frequency_cap": {"marketing": {"limit": 1, "window": 3600}}},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    (before,) = outage.post("Your parcel is out")
    (offer,) = outage.post("New arrivals", category="marketing")
    wait_until(lambda: len(outage.shown()) == 2, SETTLE_SECONDS, "the first notifications")

    outage.redis_away()
    away = outage.post("Your parcel is out", "Parcel delivered", "Parcel delivered")
    offers = outage.post("Last chance", category="marketing")
    wait_until(
        lambda: len(outage.shown()) == 2 + len(away) + len(offers),
        SETTLE_SECONDS,
        "everything sent while Redis is away",
    )
    outage.proxy.resume()
    # Checked again: the parcel message is still within its window, the offers over the cap.
    again = outage.post("Your parcel is out")
    more_offers = outage.post("Final hours", category="marketing")
    wait_until(
        lambda: (
            set(outage.delivery_statuses([*again, *more_offers]).values())
            == {"deduplicated", "throttled"}
        ),
        SETTLE_SECONDS,
        "the checks to be back",
    )

    assert sorted(outage.shown()) == sorted([before, offer, *away, *offers])
    assert set(outage.delivery_statuses(away + offers).values()) == {"sent"}
    unchecked = Counter(line["stage"] for line in outage.logged("policy.unchecked"))
    assert unchecked == {"dedup": 1, "frequency_cap": 1}
    checked = Counter(line["stage"] for line in outage.logged("policy.checked"))
    assert checked == {"dedup": 1, "frequency_cap": 1}
    assert not outage.logged("consumer.dependency_unavailable")


def queued_message(outage: Outage, title: str) -> bytes:
    """A message to the user as the relay leaves it (queued), and its AMQP message to the
    dispatcher."""
    now, message_id = utcnow(), new_id("msg")
    with outage.runtime.engine.begin() as connection:
        connection.execute(
            insert(Message),
            {
                "id": message_id,
                "app_id": outage.tenant.app_id,
                "status": "queued",
                "recipients": [{"user_id": USER}],
                "channels": ["web"],
                "content": {"title": title},
                "category": "notification",
                "priority": "normal",
                "created_at": now,
                "updated_at": now,
            },
        )
    return encode(DispatchPayload(), {"message_id": message_id, "app_id": outage.tenant.app_id})


def test_a_malformed_message_held_with_others_while_redis_is_away_is_dead_lettered_once(
    outage: Outage,
) -> None:
    outage.redis_away()
    bodies = [b"not json", queued_message(outage, "One"), queued_message(outage, "Two")]
    link = AmqpLink(AMQP_URL, outage.runtime.topology)
    link.start()
    try:
        assert link.wait_ready(10), "RabbitMQ did not answer"
        # Together: the dispatcher takes them as one batch, which waits for Redis.
        for future in link.publish_batch([Outgoing(DISPATCH_KEY, body) for body in bodies]):
            future.result(10)
    finally:
        link.close()
    outage.dispatcher.wait_for_log("consumer.dependency_unavailable", SETTLE_SECONDS)
    outage.proxy.resume()
    outage.dispatcher.wait_for_log("consumer.dependency_back", RECOVERY_SECONDS)
    wait_until(lambda: len(outage.shown()) == 2, SETTLE_SECONDS, "both notifications")
    dead = outage.runtime.topology.dead_queue
    wait_until(lambda: queue_depth(dead) == 1, SETTLE_SECONDS, "the malformed one dead-lettered")
    assert len(outage.logged("dispatch.malformed")) == 1
    # Its batch was settled once: the broker kept the channel, and nothing came back.
    assert not outage.logged("amqp.channel_closed")
    assert len(outage.logged("dispatch.message")) == 2
    queue = outage.runtime.topology.dispatch_queue
    wait_until(
        lambda: messages_in_broker(queue) == 0, SETTLE_SECONDS, "every message acked", interval=0.5
    )
