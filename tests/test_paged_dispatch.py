"""Large topics are expanded page by page, and an interrupted expansion resumes where it stopped."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, insert, select, update

from shared.ids import new_id, utcnow
from shared.models import Delivery, Event, Message, MessageExpansion, Subscription, Topic
from shared.runtime import Runtime
from tests.conftest import (
    WEB_SENDS_BY_WORKER,
    isolated_settings,
    new_tenant,
    queue_depth,
    service_env,
)
from tests.stack import Stack, wait_until
from tests.test_dispatch import dispatch, running_dispatcher


def topic_message(runtime: Runtime, subscribers: list[str], direct: list[str]) -> tuple[str, str]:
    """A queued message to a topic of `subscribers` and to the `direct` users."""
    tenant = new_tenant(runtime)
    now = utcnow()
    message_id = new_id("msg")
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(Topic), {"app_id": tenant.app_id, "key": "all", "created_at": now}
        )
        connection.execute(
            insert(Subscription),
            [{"app_id": tenant.app_id, "topic_key": "all", "user_id": u} for u in subscribers],
        )
        connection.execute(
            insert(Message),
            {
                "id": message_id,
                "app_id": tenant.app_id,
                "status": "queued",
                "recipients": [{"topic": "all"}, *({"user_id": u} for u in direct)],
                "channels": ["web"],
                "content": {"title": "t"},
                "category": "notification",
                "priority": "normal",
                "created_at": now,
                "updated_at": now,
            },
        )
    return message_id, tenant.app_id


def users_reached(runtime: Runtime, message_id: str) -> list[str]:
    with runtime.engine.connect() as connection:
        return list(
            connection.scalars(
                select(Delivery.user_id)
                .where(Delivery.message_id == message_id)
                .order_by(Delivery.user_id)
            )
        )


def status_of(runtime: Runtime, message_id: str) -> str | None:
    with runtime.engine.connect() as connection:
        return connection.scalar(select(Message.status).where(Message.id == message_id))


def expanding(runtime: Runtime, message_id: str) -> bool:
    with runtime.engine.connect() as connection:
        count = connection.scalar(
            select(func.count()).where(MessageExpansion.message_id == message_id)
        )
    return bool(count)


def test_a_topic_larger_than_a_page_reaches_every_subscriber_once(
    paged_runtime: Runtime,
) -> None:
    runtime = paged_runtime
    subscribers = [f"s{n:02}" for n in range(10)]
    message_id, app_id = topic_message(runtime, subscribers, direct=["s04", "solo"])
    with running_dispatcher(runtime):
        dispatch(runtime, message_id, app_id)
        wait_until(
            lambda: queue_depth(runtime.topology.channel_queue("web")) == 11,
            10,
            "eleven deliveries published",
        )
    assert users_reached(runtime, message_id) == sorted([*subscribers, "solo"])
    assert status_of(runtime, message_id) == "dispatched"
    assert not expanding(runtime, message_id)
    with runtime.engine.connect() as connection:
        details = list(
            connection.scalars(
                select(Event.detail).where(
                    Event.message_id == message_id, Event.stage == "dispatched"
                )
            )
        )
    assert details == [{"deliveries": 11}]


def test_an_interrupted_expansion_resumes_where_it_stopped(paged_runtime: Runtime) -> None:
    runtime = paged_runtime
    subscribers = [f"s{n:02}" for n in range(10)]
    message_id, app_id = topic_message(runtime, subscribers, direct=[])
    # As a dispatcher killed after its second page leaves it: s00..s05 written, the position
    # after s05 recorded, the message not yet dispatched, and (as may be) nothing published.
    now = utcnow()
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(Delivery),
            [
                {
                    "id": new_id("dlv"),
                    "message_id": message_id,
                    "app_id": app_id,
                    "recipient": f"user:{user}",
                    "user_id": user,
                    "channel": "web",
                    "status": "queued",
                    "created_at": now,
                    "updated_at": now,
                }
                for user in subscribers[:6]
            ],
        )
        connection.execute(
            insert(MessageExpansion),
            {"message_id": message_id, "step": 1, "after": "s05", "updated_at": now},
        )
    with running_dispatcher(runtime):
        dispatch(runtime, message_id, app_id)
        wait_until(
            lambda: queue_depth(runtime.topology.channel_queue("web")) == 10,
            10,
            "every delivery published",
        )
    assert users_reached(runtime, message_id) == subscribers
    assert status_of(runtime, message_id) == "dispatched"
    assert not expanding(runtime, message_id)


def test_a_message_canceled_mid_expansion_stops_and_sends_nothing(
    paged_runtime: Runtime,
) -> None:
    runtime = paged_runtime
    message_id, app_id = topic_message(runtime, [f"s{n:02}" for n in range(10)], direct=[])
    now = utcnow()
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(Delivery),
            {
                "id": new_id("dlv"),
                "message_id": message_id,
                "app_id": app_id,
                "recipient": "user:s00",
                "user_id": "s00",
                "channel": "web",
                "status": "queued",
                "created_at": now,
                "updated_at": now,
            },
        )
        connection.execute(
            insert(MessageExpansion),
            {"message_id": message_id, "step": 1, "after": "s00", "updated_at": now},
        )
        connection.execute(
            update(Message).where(Message.id == message_id).values(status="canceled")
        )
    with running_dispatcher(runtime):
        dispatch(runtime, message_id, app_id)
        wait_until(lambda: not expanding(runtime, message_id), 10, "the expansion ended")
        wait_until(
            lambda: queue_depth(runtime.topology.dispatch_queue) == 0, 10, "the message acked"
        )
    assert queue_depth(runtime.topology.channel_queue("web")) == 0
    with runtime.engine.connect() as connection:
        statuses = list(
            connection.scalars(select(Delivery.status).where(Delivery.message_id == message_id))
        )
    assert statuses == ["canceled"]


SUBSCRIBERS = 5000
TO_EVERYONE = {"to": [{"topic": "everyone"}], "channels": ["web"], "content": {"title": "!"}}


@pytest.fixture
def paged_stack() -> Iterator[Stack]:
    """API, relay and dispatcher on a store and queues of their own, expanding topics fifty
    subscribers a page; the dispatcher sends no web delivery itself and no worker takes them,
    so the queue shows what was published."""
    with isolated_settings() as built:
        env = service_env(built) | WEB_SENDS_BY_WORKER | {"OMNIPUSH_DISPATCH_PAGE_SIZE": "50"}
        stack = Stack(settings=built, env=env)
        try:
            for name in ("api", "relay", "dispatcher"):
                stack.start(name)
            yield stack
        finally:
            stack.stop_all()


def deliveries_by_user(runtime: Runtime, message_id: str) -> dict[str, int]:
    with runtime.engine.connect() as connection:
        rows = connection.execute(
            select(Delivery.user_id, func.count())
            .where(Delivery.message_id == message_id)
            .group_by(Delivery.user_id)
        ).all()
    return {str(user): count for user, count in rows}


def test_a_dispatcher_killed_mid_expansion_resumes_and_reaches_each_subscriber_once(
    paged_stack: Stack,
) -> None:
    stack = paged_stack
    runtime = Runtime.build(stack.settings)
    try:
        tenant = new_tenant(runtime)
        headers = {"Authorization": f"Bearer {tenant.api_key}"}
        subscribers = [f"user-{n:05}" for n in range(SUBSCRIBERS)]
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as api:
            assert api.put("/v1/topics/everyone", json={}).status_code == 201
            for start in range(0, SUBSCRIBERS, 1000):
                added = api.post(
                    "/v1/topics/everyone/subscribers",
                    json={"user_ids": subscribers[start : start + 1000]},
                )
                assert added.json() == {"subscribed": 1000}, added.text
            message = {
                "to": [{"topic": "everyone"}],
                "channels": ["web"],
                "content": {"title": "!"},
            }
            sent = api.post("/v1/messages", json=message)
        assert sent.status_code == 202, sent.text
        message_id = sent.json()["id"]

        web = runtime.topology.channel_queue("web")
        # The pages written so far already wait for the web worker.
        wait_until(
            lambda: (
                0 < sum(deliveries_by_user(runtime, message_id).values()) < SUBSCRIBERS
                and queue_depth(web) > 0
            ),
            60,
            "the expansion to be under way, its first pages published",
            interval=0.01,
        )
        stack.kill("dispatcher")
        written = sum(deliveries_by_user(runtime, message_id).values())
        assert 0 < written < SUBSCRIBERS, "the dispatcher was not killed mid-expansion"
        assert expanding(runtime, message_id)

        restarted = stack.start("dispatcher")
        restarted.wait_for_log("dispatch.message", timeout=120)  # logged once the source is acked
        assert "dispatch.resumed" in restarted.output()
        assert status_of(runtime, message_id) == "dispatched"
        assert deliveries_by_user(runtime, message_id) == dict.fromkeys(subscribers, 1)
        # Each page was published as it committed; the resumed expansion, not knowing which
        # were, publishes every delivery still queued (the workers send each once).
        published = queue_depth(web)
        assert SUBSCRIBERS <= published <= SUBSCRIBERS + written
    finally:
        runtime.close()
