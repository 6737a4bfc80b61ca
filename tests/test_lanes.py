"""Priority lanes: a high message is not held up by the low ones queued before it.

The names and keys of the lanes, then against the real broker and store: a retry and a dead
letter stay in (or leave) their lane as they should, a consuming link hands out a high message
before thousands of low ones, the relay publishes each message to its priority's dispatch lane,
and a web worker busy with 5,000 low deliveries sends a high one at once. Last, through the
whole pipeline as processes to a connected browser: behind a marketing blast of 8,000 low
deliveries, a high verification code POSTed to the API shows within a second, before most of
the blast is sent, while a low offer POSTed the same way waits its turn behind the blast; and
behind a low topic blast that the dispatcher is sending itself page by page, a high code waits
only for the rest of the blast to be written (the dispatcher leaves its sends to the web worker).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import wait
from datetime import datetime

import httpx
import pika
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, insert, select

from channels.web import WebChannel
from channels.worker import channel_context
from dispatcher.dispatch import DispatchConsumer
from dispatcher.relay import OutboxRelay
from producer_api.api_keys import NewApp, create_app_with_key
from producer_api.app import create_app
from shared.amqp.link import AmqpLink, Outgoing
from shared.amqp.topology import (
    JITTER_SLOTS,
    LANES,
    Topology,
    channel_key,
    dispatch_key,
    retry_slot,
)
from shared.config_file import Delay
from shared.models import Delivery, Message, OutboxEntry
from shared.runtime import Runtime
from shared.tokens import mint_browser_token
from tests.conftest import (
    AMQP_URL,
    WEB_SENDS_BY_WORKER,
    StackBuilder,
    bearer,
    isolated_settings,
    new_tenant,
    queue_depth,
    queue_prefix,
    service_env,
)
from tests.inbox_client import InboxClient
from tests.offline_dns import offline_resolver
from tests.queued import queued_deliveries, queued_delivery, running_worker
from tests.stack import SERVICE_ARGS, Stack, wait_until

ONE_SECOND = Delay("1s", 1.0)
LOW_BACKLOG = 5000


def test_the_normal_lane_keeps_the_plain_names_and_the_others_add_their_lane() -> None:
    topology = Topology(prefix="op", channels=("web", "sms"))
    assert LANES == ("high", "normal", "low")
    assert [dispatch_key(lane) for lane in LANES] == ["dispatch.high", "dispatch", "dispatch.low"]
    assert [channel_key("web", lane) for lane in LANES] == [
        "channel.web.high",
        "channel.web",
        "channel.web.low",
    ]
    assert (dispatch_key(), channel_key("sms")) == ("dispatch", "channel.sms")
    assert (topology.dispatch_queue, topology.channel_queue("web")) == (
        "op.dispatch",
        "op.channel.web",
    )
    assert topology.dispatch_queues() == ["op.dispatch.high", "op.dispatch", "op.dispatch.low"]
    assert topology.channel_queues("sms") == [
        "op.channel.sms.high",
        "op.channel.sms",
        "op.channel.sms.low",
    ]
    work = {s.name: s.routing_key for s in topology.queues() if s.exchange == topology.exchange}
    assert work == {
        f"op.{key}": key
        for key in [
            *(dispatch_key(lane) for lane in LANES),
            *(channel_key(channel, lane) for channel in ("web", "sms") for lane in LANES),
        ]
    }
    with pytest.raises(ValueError, match="unknown lane"):
        channel_key("web", "urgent")


@pytest.fixture
def topology() -> Iterator[Topology]:
    """A web topology of its own with a single retry tier of a second (deleted afterwards)."""
    with queue_prefix() as prefix:
        built = Topology(prefix=prefix, channels=("web",), retry_delays=(ONE_SECOND,))
        yield built
        # Its own tier too: `queue_prefix` knows only the default ones.
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        built.delete_blocking(connection.channel())
        connection.close()


def test_a_retried_delivery_comes_back_in_its_lane_and_a_dead_one_goes_to_the_shared_dead_queue(
    link: AmqpLink, topology: Topology
) -> None:
    retries = [
        Outgoing(
            channel_key("web", "high"),
            b"{}",
            headers={"tier": retry_slot("1s", slot)},
            exchange=topology.retry_exchange,
        )
        for slot in range(JITTER_SLOTS)
    ]
    retries.append(
        Outgoing(
            channel_key("web", "low"),
            b"{}",
            headers={"tier": "1s"},
            exchange=topology.retry_exchange,
        )
    )
    dead = [
        Outgoing(channel_key("web", lane), b"{}", exchange=topology.dead_exchange) for lane in LANES
    ]
    for future in link.publish_batch([*retries, *dead]):
        future.result(timeout=10)
    high, normal, low = topology.channel_queues("web")
    wait_until(
        lambda: (queue_depth(high), queue_depth(low)) == (JITTER_SLOTS, 1),
        15,
        "every retry back in its lane",
    )
    assert queue_depth(normal) == 0
    assert queue_depth(topology.dead_queue) == len(LANES)


def test_a_high_message_is_handed_out_before_thousands_of_low_ones_consumed_before_it(
    link: AmqpLink, topology: Topology
) -> None:
    lows = link.publish_batch([Outgoing(channel_key("web", "low"), b"low")] * LOW_BACKLOG)
    _done, not_done = wait(lows, timeout=60)
    assert not not_done
    high, _normal, low = topology.channel_queues("web")
    prefetch = 50
    consumer = AmqpLink(
        AMQP_URL, topology, consume_queues=topology.channel_queues("web"), prefetch=prefetch
    )
    consumer.start()
    try:
        assert consumer.wait_ready(10)
        # The low lane's consumer is full: the broker holds back the rest of the backlog.
        wait_until(lambda: consumer.inbox.qsize() == prefetch, 10, "the low lane's prefetch")
        link.publish_batch([Outgoing(channel_key("web", "high"), b"high")])[0].result(10)
        # The high lane's consumer has a prefetch of its own, so the high message comes at once.
        wait_until(lambda: consumer.inbox.qsize() == prefetch + 1, 10, "the high message")
        taken = [consumer.inbox.get(timeout=1) for _ in range(prefetch + 1)]
        assert [message.body for message in taken[:2]] == [b"high", b"low"]
        assert taken[0].routing_key == channel_key("web", "high")
        # One channel for every lane: delivery tags never clash, so each ack settles its own.
        assert len({message.delivery_tag for message in taken}) == prefetch + 1
        for message in taken[:2]:
            consumer.ack(message)
        wait_until(lambda: queue_depth(high) == 0, 10, "the high message acked")
    finally:
        consumer.close()
    # Acked one low message; the unacked ones went back to their lane, none to another.
    wait_until(lambda: queue_depth(low) == LOW_BACKLOG - 1, 10, "the unacked low ones back")
    assert queue_depth(high) == 0


@pytest.fixture
def own_store() -> Iterator[tuple[Runtime, FlaskClient, NewApp]]:
    """A store and queues of their own (a relay publishes every due row of its store), the
    API on them, and an app with its API key."""
    with isolated_settings() as settings:
        runtime = Runtime.build(settings)
        app = create_app(settings, runtime=runtime, resolver=offline_resolver())
        with runtime.sessions() as session, session.begin():
            tenant = create_app_with_key(session, "lanes")
        try:
            with app.test_client() as client:
                yield runtime, client, tenant
        finally:
            runtime.close()


def post(client: FlaskClient, tenant: NewApp, priority: str | None) -> str:
    body = {"to": [{"user_id": "ann"}], "channels": ["web"], "content": {"title": "Hi"}}
    response = client.post(
        "/v1/messages",
        json=body if priority is None else {**body, "priority": priority},
        headers={"Authorization": f"Bearer {tenant.api_key}"},
    )
    assert response.status_code == 202, response.get_json()
    message_id: str = response.get_json()["id"]
    return message_id


def take(queue: str) -> dict[str, str] | None:
    """The payload of the message at the head of `queue` (removed), or None."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        _method, _properties, body = connection.channel().basic_get(queue, auto_ack=True)
    finally:
        connection.close()
    return None if body is None else dict(json.loads(body))


def test_the_relay_publishes_each_row_to_the_lane_of_its_message_priority(
    own_store: tuple[Runtime, FlaskClient, NewApp],
) -> None:
    runtime, client, tenant = own_store
    sent = {priority: post(client, tenant, priority) for priority in ("low", "high", "normal")}
    unnamed = post(client, tenant, None)
    # A delivery of the high message whose outbox row names only its channel (as a deferred one
    # released later): its message's lane too.
    delivery = {
        "delivery_id": "dlv_later",
        "message_id": sent["high"],
        "app_id": tenant.app_id,
        "channel": "web",
    }
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(OutboxEntry),
            {"message_id": sent["high"], "routing_key": channel_key("web"), "payload": delivery},
        )
    link = AmqpLink(AMQP_URL, runtime.topology)
    link.start()
    try:
        assert link.wait_ready(10)
        assert OutboxRelay(runtime, link).relay_once() == 5
    finally:
        link.close()
    web_high, web_normal, _web_low = runtime.topology.channel_queues("web")
    assert queue_depth(web_normal) == 0
    assert take(web_high) == {**delivery, "priority": "high"}
    high, normal, low = runtime.topology.dispatch_queues()
    assert [queue_depth(queue) for queue in (high, normal, low)] == [1, 2, 1]
    app_id = tenant.app_id
    assert take(high) == {"message_id": sent["high"], "app_id": app_id, "priority": "high"}
    assert take(low) == {"message_id": sent["low"], "app_id": app_id, "priority": "low"}
    assert [take(normal), take(normal)] == [
        {"message_id": sent["normal"], "app_id": app_id, "priority": "normal"},
        {"message_id": unnamed, "app_id": app_id, "priority": "normal"},
    ]
    with runtime.engine.connect() as connection:
        unpublished = connection.scalar(
            select(func.count()).where(OutboxEntry.published_at.is_(None))
        )
        statuses = set(connection.scalars(select(Message.status)))
    assert (unpublished, statuses) == (0, {"queued"})


def test_a_high_message_goes_from_the_relay_to_the_high_lane_of_its_channel(
    own_store: tuple[Runtime, FlaskClient, NewApp],
) -> None:
    runtime, client, tenant = own_store
    message_id = post(client, tenant, "high")
    relay_link = AmqpLink(AMQP_URL, runtime.topology)
    relay = OutboxRelay(runtime, relay_link)
    link = AmqpLink(AMQP_URL, runtime.topology, consume_queues=runtime.topology.dispatch_queues())
    dispatcher = DispatchConsumer(runtime, link)
    threads = [threading.Thread(target=s.run, daemon=True) for s in (relay, dispatcher)]
    for thread in threads:
        thread.start()
    high, normal, _low = runtime.topology.channel_queues("web")
    try:
        assert relay_link.wait_ready(10) and link.wait_ready(10), "RabbitMQ did not answer"
        wait_until(lambda: queue_depth(high) + queue_depth(normal) == 1, 20, "the delivery")
    finally:
        relay.stop()
        dispatcher.stop()
        for thread in threads:
            thread.join(20)
    payload = take(high)
    assert payload is not None, "the delivery of a high message went to the normal lane"
    assert (payload["message_id"], payload["priority"]) == (message_id, "high")


def test_a_high_delivery_is_sent_within_a_second_while_5000_low_ones_wait(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    _blast, lows = queued_deliveries(runtime, LOW_BACKLOG, priority="low")

    def sent(ids: list[str]) -> int:
        with runtime.engine.connect() as connection:
            return int(
                connection.scalar(
                    select(func.count()).where(Delivery.id.in_(ids), Delivery.status == "sent")
                )
                or 0
            )

    with running_worker(runtime, WebChannel(channel_context(runtime, "web"))):
        wait_until(lambda: sent(lows) > 0, 20, "the worker busy with the low backlog")
        _message_id, code = queued_delivery(runtime, category="verification", priority="high")
        queued_at = time.monotonic()
        wait_until(lambda: sent([code]), 5, "the high delivery sent")
        waited = time.monotonic() - queued_at
        lows_sent = sent(lows)
    assert waited < 1.0, f"the high delivery waited {waited:.2f}s behind the low ones"
    assert lows_sent < LOW_BACKLOG, "the low backlog was gone before the high one was sent"


#: A marketing blast that one web worker takes seconds to send (some 3,000 a second here).
BLAST = 8000
#: The user of the app's code and offer, with the gateway open; none of the blast's users.
USER = "ann"


@pytest.fixture
def lanes_stack() -> Iterator[tuple[Stack, Runtime]]:
    """The pipeline as processes on a store and queues of their own, and a reader of its store:
    api, relay, dispatcher and gateway running; the web worker is the test's to start, once the
    backlog it is to work through waits for it. The web worker sends every web delivery, so
    that each goes through the lanes of its queue (`OMNIPUSH_WEB_SENDS=worker`)."""
    with isolated_settings() as settings:
        stack = Stack(settings=settings, env=service_env(settings) | WEB_SENDS_BY_WORKER)
        runtime = Runtime.build(settings)
        try:
            stack.start_all(names=[name for name in SERVICE_ARGS if name != "worker-web"])
            yield stack, runtime
        finally:
            stack.stop_all()
            runtime.close()


def send(api: httpx.Client, priority: str, category: str, title: str) -> tuple[str, float]:
    """POST one web message to `USER`: its id, and the monotonic time just before the POST."""
    posted = time.monotonic()
    response = api.post(
        "/v1/messages",
        json={
            "to": [{"user_id": USER}],
            "channels": ["web"],
            "priority": priority,
            "category": category,
            "content": {"title": title},
        },
    )
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id, posted


def sent_at(runtime: Runtime, message_id: str) -> datetime | None:
    """When the one delivery of `message_id` was recorded as sent (None: not yet)."""
    with runtime.engine.connect() as connection:
        return connection.scalar(select(Delivery.sent_at).where(Delivery.message_id == message_id))


def sent_before(runtime: Runtime, message_id: str, instant: datetime | None = None) -> int:
    """How many deliveries of `message_id` were recorded as sent (before `instant`)."""
    sent = Delivery.sent_at.is_not(None) if instant is None else Delivery.sent_at < instant
    with runtime.engine.connect() as connection:
        count = connection.scalar(
            select(func.count()).where(Delivery.message_id == message_id, sent)
        )
    return int(count or 0)


def test_a_connected_user_gets_a_high_code_within_a_second_and_a_low_offer_behind_the_blast(
    lanes_stack: tuple[Stack, Runtime],
) -> None:
    stack, runtime = lanes_stack
    tenant = new_tenant(runtime)
    token, _ = mint_browser_token(stack.settings.secret_key, tenant.app_id, USER, 600)
    browser = InboxClient(stack.gateway_url, token).connect()
    try:
        with httpx.Client(base_url=stack.api_url, headers=bearer(tenant), timeout=30) as api:
            # A message through first, as in a pipeline that has been running: the first one of
            # each process pays for its connections and prepared statements and scripts.
            welcome, _posted = send(api, "normal", "notification", "Welcome")
            normal = runtime.topology.channel_queue("web")
            wait_until(lambda: queue_depth(normal) == 1, 20, "the welcome dispatched")
            # The blast as the dispatcher leaves it: a delivery to each of its users in the low
            # lane, all waiting when the worker starts.
            blast, _deliveries = queued_deliveries(runtime, BLAST, priority="low")
            stack.start("worker-web")
            browser.arrival_of(welcome, 20)
            wait_until(lambda: sent_before(runtime, blast), 20, "the worker busy with the blast")
            code, posted = send(api, "high", "verification", "Your code is 481516")
            code_waited = browser.arrival_of(code, 10) - posted
            # The control: the same way, but low, it waits its turn behind the blast.
            offer, _posted = send(api, "low", "marketing", "Spring sale")
            browser.arrival_of(offer, 30)
    finally:
        browser.close()
    code_sent = wait_until(lambda: sent_at(runtime, code), 10, "the code recorded as sent")
    offer_sent = wait_until(lambda: sent_at(runtime, offer), 10, "the offer recorded as sent")
    before_code = sent_before(runtime, blast, code_sent)
    before_offer = sent_before(runtime, blast, offer_sent)
    assert [n["message_id"] for n in browser.notifications] == [welcome, code, offer]
    assert code_waited < 1.0, f"the code took {code_waited:.2f}s to reach the browser"
    assert before_code < BLAST // 2, f"the code came after {before_code} of the blast"
    assert before_offer > BLAST * 0.9, f"the offer came after only {before_offer} of the blast"


#: Subscribers of the topic the dispatcher sends itself, page by page.
TOPIC_BLAST = 5000


@pytest.fixture
def sending_stack(isolated_stack: StackBuilder) -> Iterator[tuple[Stack, Runtime]]:
    """The whole pipeline as processes on a store and queues of their own, the dispatcher
    sending web deliveries itself (the default), two hundred subscribers a page."""
    stack = isolated_stack({"OMNIPUSH_DISPATCH_PAGE_SIZE": "200"})
    runtime = Runtime.build(stack.settings)
    yield stack, runtime
    runtime.close()


def test_a_high_code_waits_for_no_sends_of_a_low_topic_blast_the_dispatcher_was_sending(
    sending_stack: tuple[Stack, Runtime],
) -> None:
    stack, runtime = sending_stack
    tenant = new_tenant(runtime)
    token, _ = mint_browser_token(stack.settings.secret_key, tenant.app_id, USER, 600)
    browser = InboxClient(stack.gateway_url, token).connect()
    subscribers = [f"fan-{n:05}" for n in range(TOPIC_BLAST)]
    try:
        with httpx.Client(base_url=stack.api_url, headers=bearer(tenant), timeout=30) as api:
            welcome, _posted = send(api, "normal", "notification", "Welcome")
            browser.arrival_of(welcome, 20)
            assert api.put("/v1/topics/fans", json={}).status_code == 201
            for start in range(0, TOPIC_BLAST, 1000):
                chunk = {"user_ids": subscribers[start : start + 1000]}
                assert api.post("/v1/topics/fans/subscribers", json=chunk).status_code == 200
            sale = {"title": "Spring sale"}
            to_fans = {"to": [{"topic": "fans"}], "channels": ["web"], "content": sale}
            posted_blast = api.post(
                "/v1/messages", json=to_fans | {"priority": "low", "category": "marketing"}
            )
            assert posted_blast.status_code == 202, posted_blast.text
            blast = posted_blast.json()["id"]
            wait_until(lambda: sent_before(runtime, blast), 20, "the dispatcher sending the blast")
            code, posted = send(api, "high", "verification", "Your code is 271828")
            code_waited = browser.arrival_of(code, 10) - posted
    finally:
        browser.close()
    code_sent = wait_until(lambda: sent_at(runtime, code), 10, "the code recorded as sent")
    # It waited for the rest of the blast's pages to be written, not for them to be sent: the
    # dispatcher left their sends to the web worker once the code was waiting for it.
    assert sent_before(runtime, blast, code_sent) < TOPIC_BLAST, "the whole blast came first"
    assert code_waited < 5.0, f"the code took {code_waited:.2f}s to reach the browser"
    wait_until(lambda: sent_before(runtime, blast) == TOPIC_BLAST, 60, "the whole blast sent")
    assert "worker.batch" in stack.services["worker-web"].output(), "the worker sent none of it"
