"""A message to an app's webhook endpoint through the real pipeline, into a verifying receiver.

The api, relay, dispatcher and webhook worker run as `omnipush serve` processes of their own
store and queues. The receiver listens on loopback, which the outbound guard refuses unless
`OMNIPUSH_OUTBOUND_ALLOW` lets it: the guard holds at acceptance and again at call time.
Each endpoint is a provider account of its own: one endpoint's slow-down pauses only it; and
each is delivered on the one channel its kind needs (`webhook`, or `chat` for the robots),
also when a large topic makes the dispatcher expand its message step by step.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, update

from channels.base import EndpointTarget, OutboundDelivery, Outcome
from channels.webhook import WebhookChannel
from producer_api.api_keys import NewApp
from shared.ids import utcnow
from shared.models import Delivery, Endpoint, Message
from shared.runtime import Runtime
from shared.settings import Settings
from shared.standard_webhooks import generate_secret
from tests.channel_harness import Answer, channel_settings, context_for, delivery_for
from tests.conftest import isolated_settings, new_tenant, queue_prefix, service_env
from tests.stack import READY_SECONDS, Service, Stack, wait_until
from tests.test_dispatch import dispatch, running_dispatcher
from tests.test_paged_dispatch import status_of, topic_message
from tests.webhook_receivers import RETRY_AFTER_SECONDS, WebhookReceiver

ALLOW_LOOPBACK = {"OMNIPUSH_OUTBOUND_ALLOW": "127.0.0.1/32"}


def webhook_worker(stack: Stack, env: dict[str, str]) -> Service:
    worker = Service(["serve", "worker", "--channel", "webhook"], {**stack.env, **env}).start()
    worker.wait_for_log("amqp.ready", READY_SECONDS)
    return worker


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Stack]:
    """api (allowing loopback), relay and dispatcher of a store and queues of their own."""
    with isolated_settings() as settings:
        stack = Stack(settings=settings, env=service_env(settings))
        try:
            stack.start("api", ALLOW_LOOPBACK)
            stack.start("relay")
            stack.start("dispatcher")
            yield stack
        finally:
            stack.stop_all()


@pytest.fixture
def api(pipeline: Stack) -> Iterator[httpx.Client]:
    runtime = Runtime.build(pipeline.settings)
    try:
        tenant: NewApp = new_tenant(runtime)
    finally:
        runtime.close()
    with httpx.Client(
        base_url=pipeline.api_url, headers={"Authorization": f"Bearer {tenant.api_key}"}, timeout=10
    ) as client:
        yield client


def endpoint_for(api: httpx.Client, receiver: WebhookReceiver) -> None:
    """Register the receiver as endpoint `orders`, and give it the secret the API generated."""
    response = api.put("/v1/endpoints/orders", json={"kind": "webhook", "url": receiver.url})
    assert response.status_code == 201, response.text
    receiver.secret = response.json()["secret"]


def send(api: httpx.Client) -> str:
    response = api.post(
        "/v1/messages",
        json={
            "to": [{"endpoint": "orders"}],
            "channels": ["webhook"],
            "content": {"title": "Order 42 shipped", "body": "On its way", "data": {"order": 42}},
        },
    )
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


def settled(api: httpx.Client, message_id: str) -> dict[str, Any] | None:
    message: dict[str, Any] = api.get(f"/v1/messages/{message_id}").json()
    return message if message["status"] in ("completed", "failed") else None


def test_a_message_to_a_webhook_endpoint_arrives_signed_and_verified(
    pipeline: Stack, api: httpx.Client
) -> None:
    worker = webhook_worker(pipeline, ALLOW_LOOPBACK)
    try:
        with WebhookReceiver() as receiver:
            endpoint_for(api, receiver)
            message_id = send(api)
            message = wait_until(lambda: settled(api, message_id), 30, "the message settled")
            assert message["status"] == "completed", message
            (delivery,) = message["deliveries"]
            assert delivery["channel"] == "webhook" and delivery["status"] == "sent"
            (request,) = receiver.for_delivery(delivery["id"])
            assert request.verified, request.error
            assert request.payload is not None
            assert request.payload["message_id"] == message_id
            assert request.payload["title"] == "Order 42 shipped"
            assert request.payload["data"] == {"order": 42}
    finally:
        worker.stop()


def test_a_webhook_that_failed_is_retried_with_the_same_webhook_id(
    pipeline: Stack, api: httpx.Client
) -> None:
    worker = webhook_worker(pipeline, ALLOW_LOOPBACK)
    try:
        with WebhookReceiver() as receiver:
            endpoint_for(api, receiver)
            receiver.answer(Answer.SERVER_ERROR)
            message_id = send(api)
            wait_until(lambda: receiver.received, 30, "the first attempt")
            receiver.answer(Answer.OK)
            # Back after the first retry tier (5 s).
            message = wait_until(lambda: settled(api, message_id), 30, "the message settled")
            assert message["status"] == "completed", message
            (delivery,) = message["deliveries"]
            assert delivery["attempts"] == 2
            first, second = receiver.for_delivery(delivery["id"])
            assert first.verified and second.verified
            # A receiver that kept the first one can tell the second is the same event.
            assert first.payload == second.payload
    finally:
        worker.stop()


def test_a_loopback_endpoint_is_refused_at_call_time_once_the_allow_list_no_longer_has_it(
    pipeline: Stack, api: httpx.Client
) -> None:
    # Accepted while the API allows loopback; the worker's operator has since closed it.
    worker = webhook_worker(pipeline, {})
    try:
        with WebhookReceiver() as receiver:
            endpoint_for(api, receiver)
            message_id = send(api)
            message = wait_until(lambda: settled(api, message_id), 30, "the message settled")
            assert message["status"] == "failed", message
            (delivery,) = message["deliveries"]
            assert delivery["status"] == "failed" and delivery["attempts"] == 1
            assert "refused by the outbound guard" in delivery["last_error"]
            assert "loopback" in delivery["last_error"]
            assert receiver.received == []
    finally:
        worker.stop()


def test_a_429_pauses_only_the_endpoint_that_sent_it() -> None:
    with (
        channel_settings() as settings,
        WebhookReceiver(generate_secret()) as slow,
        WebhookReceiver(generate_secret()) as fine,
    ):
        allowed = settings.with_overrides(outbound_allow=(ipaddress.ip_network("127.0.0.1/32"),))
        channel = WebhookChannel(context_for(allowed, "webhook"), timeout=2)
        try:
            slow.answer(Answer.SLOW_DOWN)

            def to(name: str, receiver: WebhookReceiver) -> OutboundDelivery:
                assert receiver.secret is not None
                target = EndpointTarget(name, "webhook", receiver.url, receiver.secret)
                return delivery_for("webhook", user_id=None, address=name, endpoint=target)

            first = channel.send(to("slow", slow))
            again = channel.send(to("slow", slow))
            other = channel.send(to("fine", fine))
        finally:
            channel.close()
    assert first.outcome is Outcome.DEFERRED and first.retry_after == RETRY_AFTER_SECONDS
    # Paused by its Retry-After: not called again, and the delivery waits without an attempt.
    assert again.outcome is Outcome.DEFERRED and len(slow.received) == 1
    assert other.outcome is Outcome.SENT and fine.received[0].verified


def test_each_endpoint_gets_one_delivery_on_the_channel_of_its_kind(
    pipeline: Stack, api: httpx.Client
) -> None:
    hook = api.put("/v1/endpoints/orders", json={"kind": "webhook", "url": "http://127.0.0.1:9/h"})
    robot = api.put("/v1/endpoints/ops", json={"kind": "slack", "url": "http://127.0.0.1:9/s"})
    assert hook.status_code == robot.status_code == 201, (hook.text, robot.text)
    response = api.post(
        "/v1/messages",
        json={
            "to": [{"endpoint": "orders"}, {"endpoint": "ops"}],
            "channels": ["webhook", "chat"],
            "content": {"title": "Deploy finished"},
        },
    )
    assert response.status_code == 202, response.text
    message_id = response.json()["id"]

    def deliveries() -> list[tuple[str, str]] | None:
        found = api.get(f"/v1/messages/{message_id}").json()["deliveries"]
        return sorted((d["address"], d["channel"]) for d in found) or None

    assert wait_until(deliveries, 30, "the deliveries") == [("ops", "chat"), ("orders", "webhook")]


@pytest.fixture
def paged_runtime(settings: Settings) -> Iterator[Runtime]:
    """The in-process store, queues of its own, and a dispatcher page of three subscribers."""
    with queue_prefix() as prefix:
        built = Runtime.build(settings.with_overrides(queue_prefix=prefix, dispatch_page_size=3))
        yield built
        built.close()


def test_a_message_with_a_large_topic_routes_its_endpoints_too(paged_runtime: Runtime) -> None:
    # The topic is larger than a dispatcher page, so the message is expanded step by step; its
    # direct recipients (the endpoints) go in the first step, each on its own channel.
    runtime = paged_runtime
    message_id, app_id = topic_message(runtime, [f"s{n}" for n in range(5)], direct=[])
    now = utcnow()
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(Endpoint),
            [
                {
                    "app_id": app_id,
                    "name": name,
                    "kind": kind,
                    "url": "https://shop.example/h",
                    "secret": None,
                    "created_at": now,
                    "updated_at": now,
                }
                for name, kind in (("orders", "webhook"), ("ops", "wecom"))
            ],
        )
        connection.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(
                recipients=[{"topic": "all"}, {"endpoint": "orders"}, {"endpoint": "ops"}],
                channels=["web", "webhook", "chat"],
            )
        )
    with running_dispatcher(runtime):
        dispatch(runtime, message_id, app_id)
        wait_until(lambda: status_of(runtime, message_id) == "dispatched", 10, "dispatched")
    with runtime.engine.connect() as connection:
        rows = connection.execute(
            select(Delivery.address, Delivery.channel).where(
                Delivery.message_id == message_id, Delivery.user_id.is_(None)
            )
        ).all()
    assert sorted(tuple(row) for row in rows) == [("ops", "chat"), ("orders", "webhook")]
