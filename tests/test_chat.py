"""The chat channel against local robot servers that check requests as each vendor does.

The shared harness (`tests/test_channel_contract.py`, rigs `chat_*`) holds every robot to the
outcomes the worker needs; here: the signing schemes with and without a secret, the
private-address guard, what is not a chat robot, per-endpoint slow-downs, the rendered `chat`
part, and the worker sending to an app's endpoints from the store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import replace

import httpx
import pika
import pytest
from sqlalchemy import insert, select

from channels.base import EndpointTarget, Outcome
from channels.chat import ChatChannel
from channels.chat_robots import Robot
from channels.chat_robots.dingtalk import DingTalkRobot
from channels.chat_robots.feishu import FeishuRobot
from channels.chat_robots.slack import SlackRobot
from channels.chat_robots.wecom import WeComRobot
from channels.worker import ChannelWorker, channel_context
from shared.amqp.link import AmqpLink
from shared.amqp.topology import Topology, channel_key
from shared.ids import new_id, utcnow
from shared.models import Delivery, Endpoint, Message
from shared.payloads import DeliveryPayload, encode
from shared.runtime import Runtime
from shared.settings import Settings
from tests.channel_harness import Answer, channel_settings
from tests.chat_robots import (
    LOOPBACK,
    DingTalkServer,
    FeishuServer,
    RobotServer,
    SlackServer,
    WeComServer,
    chat_channel,
    chat_delivery,
)
from tests.conftest import AMQP_URL, new_tenant, publish, queue_prefix
from tests.stack import wait_until

SERVERS = [SlackServer, DingTalkServer, FeishuServer, WeComServer]
SIGNING = [DingTalkServer, FeishuServer]


@pytest.fixture
def settings_for_chat() -> Iterator[Settings]:
    with channel_settings() as settings:
        yield settings


@pytest.fixture
def channel(settings_for_chat: Settings) -> Iterator[ChatChannel]:
    """The chat channel, the private-address guard opened for 127.0.0.1."""
    built = chat_channel(settings_for_chat)
    yield built
    built.close()


def endpoint_of(
    server: RobotServer, secret: str | None = None, name: str = "ops"
) -> EndpointTarget:
    return EndpointTarget(name, server.kind, server.url, secret)


def signature_of(sent: Iterable[str]) -> set[str]:
    """The signature fields a request carried (query for DingTalk, body for Feishu)."""
    return {"timestamp", "sign"} & set(sent)


@pytest.mark.parametrize("server_class", SIGNING, ids=lambda c: c.kind)
def test_a_robot_with_a_secret_gets_a_signature_its_vendor_accepts(
    server_class: type[RobotServer], channel: ChatChannel
) -> None:
    secret = "SEC-signing-secret-of-this-robot"
    with server_class(secret=secret) as server:
        result = channel.send(chat_delivery(endpoint_of(server, secret)))
    assert result.outcome is Outcome.SENT, result
    assert server.refusals == []
    (received,) = server.received
    carried = received.query if server.kind == "dingtalk" else received.body
    assert signature_of(carried) == {"timestamp", "sign"}


@pytest.mark.parametrize("server_class", SIGNING, ids=lambda c: c.kind)
def test_a_robot_without_a_secret_gets_no_signature(
    server_class: type[RobotServer], channel: ChatChannel
) -> None:
    with server_class(secret=None) as server:
        result = channel.send(chat_delivery(endpoint_of(server)))
    assert result.outcome is Outcome.SENT, result
    (received,) = server.received
    assert signature_of({**received.query, **received.body}) == set()


@pytest.mark.parametrize("server_class", SIGNING, ids=lambda c: c.kind)
def test_a_signature_of_the_wrong_secret_is_refused_for_good(
    server_class: type[RobotServer], channel: ChatChannel
) -> None:
    with server_class(secret="the-robots-secret") as server:
        result = channel.send(chat_delivery(endpoint_of(server, "another-secret")))
    assert result.outcome is Outcome.PERMANENT, result
    assert "signature" in (result.detail or "")
    assert server.refusals and server.received == []


@pytest.mark.parametrize("server_class", SERVERS, ids=lambda c: c.kind)
def test_a_private_url_is_refused_without_the_allow_list(
    server_class: type[RobotServer], settings_for_chat: Settings
) -> None:
    guarded = chat_channel(settings_for_chat, allow_loopback=False)
    with server_class() as server, closing(guarded):
        result = guarded.send(chat_delivery(endpoint_of(server)))
    assert result.outcome is Outcome.PERMANENT, result
    assert "loopback" in (result.detail or "")
    assert server.received == [] and server.refusals == []


@pytest.mark.parametrize("kind", ["webhook", "telegram"])
def test_an_endpoint_that_is_not_a_chat_robot_fails_for_good_without_a_call(
    kind: str, channel: ChatChannel
) -> None:
    with SlackServer() as server:
        endpoint = EndpointTarget("hooks", kind, server.url, "whsec_abc")
        result = channel.send(chat_delivery(endpoint))
    assert result.outcome is Outcome.PERMANENT, result
    assert ("webhook channel" if kind == "webhook" else "chat robots") in (result.detail or "")
    assert server.received == [] and server.refusals == []


@pytest.mark.parametrize("server_class", SERVERS, ids=lambda c: c.kind)
def test_a_slowed_down_robot_waits_while_the_apps_other_robots_do_not(
    server_class: type[RobotServer], channel: ChatChannel
) -> None:
    with server_class() as server:
        server.answer(Answer.SLOW_DOWN)
        first = channel.send(chat_delivery(endpoint_of(server)))
        server.answer(Answer.OK)
        again = channel.send(chat_delivery(endpoint_of(server)))
        other = channel.send(chat_delivery(endpoint_of(server, name="other-room")))
    assert first.outcome is Outcome.DEFERRED and first.retry_after, first
    # Paused for every worker: not even called until the pause ends.
    assert again.outcome is Outcome.DEFERRED and again.retry_after, again
    assert other.outcome is Outcome.SENT, other
    assert len(server.received) == 1


@pytest.mark.parametrize("server_class", SERVERS, ids=lambda c: c.kind)
def test_the_rendered_chat_part_is_posted_and_a_bare_body_is_a_text_message(
    server_class: type[RobotServer], channel: ChatChannel
) -> None:
    with server_class() as server:
        delivery = chat_delivery(endpoint_of(server))
        rendered = {"chat": {"title": None, "body": "Rendered for the team room"}}
        result = channel.send(replace(delivery, content={**delivery.content, "parts": rendered}))
    assert result.outcome is Outcome.SENT, result
    assert server.refusals == []
    (received,) = server.received
    assert received.says("Rendered for the team room")
    assert not received.says("Order shipped")
    kind_field = "msg_type" if server.kind == "feishu" else "msgtype"
    if server.kind != "slack":
        assert received.body[kind_field] == "text"


def test_one_connection_is_kept_alive_across_sends(channel: ChatChannel) -> None:
    with WeComServer() as server:
        results = [channel.send(chat_delivery(endpoint_of(server))) for _ in range(3)]
    assert [r.outcome for r in results] == [Outcome.SENT] * 3
    assert len(server.received) == 3
    assert server.connections == 1


@pytest.mark.parametrize("server_class", [SlackServer, WeComServer], ids=lambda c: c.kind)
@pytest.mark.parametrize("title", ["Order shipped", None], ids=["titled", "bare"])
def test_a_body_over_the_vendors_limit_is_cut_to_fit(
    server_class: type[RobotServer], title: str | None, channel: ChatChannel
) -> None:
    with server_class() as server:
        delivery = chat_delivery(endpoint_of(server))
        content = {**delivery.content, "title": title, "body": "包裹" * 2500}
        result = channel.send(replace(delivery, content=content))
    assert result.outcome is Outcome.SENT, result
    assert server.refusals == []
    (received,) = server.received
    assert received.says("包裹包裹")
    assert received.says("https://shop.example/orders/42")


ANSWERS: list[tuple[Robot, int, str | dict[str, object], Outcome]] = [
    (SlackRobot(), 410, "channel_is_archived", Outcome.PERMANENT),
    (SlackRobot(), 403, "action_prohibited", Outcome.PERMANENT),
    (SlackRobot(), 400, "invalid_payload", Outcome.PERMANENT),
    (DingTalkRobot(), 200, {"errcode": 300001, "errmsg": "token is not exist"}, Outcome.PERMANENT),
    (DingTalkRobot(), 200, "<html>gateway</html>", Outcome.PERMANENT),
    (FeishuRobot(), 200, {"StatusCode": 0, "StatusMessage": "success"}, Outcome.SENT),
    (FeishuRobot(), 200, {"code": 9499, "msg": "Too Many Request"}, Outcome.DEFERRED),
    (FeishuRobot(), 400, {"code": 9499, "msg": "Bad Request"}, Outcome.PERMANENT),
    (FeishuRobot(), 400, {"code": 19021, "msg": "sign match fail"}, Outcome.PERMANENT),
    (FeishuRobot(), 200, "not json", Outcome.PERMANENT),
    (WeComRobot(), 200, {"errcode": 40008, "errmsg": "invalid message type"}, Outcome.PERMANENT),
    (WeComRobot(), 404, "", Outcome.PERMANENT),
]


@pytest.mark.parametrize(
    ("robot", "status", "body", "expected"),
    ANSWERS,
    ids=[
        f"{robot.kind} {status} {body if isinstance(body, str) else list(body.values())}"
        for robot, status, body, _ in ANSWERS
    ],
)
def test_each_vendors_other_answers_are_read_as_the_vendor_means_them(
    robot: Robot, status: int, body: str | dict[str, object], expected: Outcome
) -> None:
    answer = (
        httpx.Response(status, json=body)
        if isinstance(body, dict)
        else httpx.Response(status, text=body)
    )
    result = robot.outcome(answer)
    assert result.outcome is expected, result
    if expected is Outcome.DEFERRED:
        assert result.retry_after and result.retry_after > 0


@pytest.fixture
def chat_runtime(inprocess_settings: Settings) -> Iterator[Runtime]:
    """The in-process store with queues of its own that include the chat channel's."""
    with queue_prefix() as prefix:
        settings = inprocess_settings.with_overrides(queue_prefix=prefix, outbound_allow=LOOPBACK)
        built = Runtime.build(settings, channels=("chat",))
        try:
            yield built
        finally:
            built.close()
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            Topology(prefix=prefix, channels=("chat",)).delete_blocking(connection.channel())
            connection.close()


def test_the_worker_posts_to_the_apps_robot_and_fails_its_webhook_for_good(
    chat_runtime: Runtime,
) -> None:
    runtime = chat_runtime
    tenant = new_tenant(runtime)
    now = utcnow()
    message_id = new_id("msg")
    deliveries = {"room": new_id("dlv"), "hook": new_id("dlv")}
    with FeishuServer(secret="room-secret") as server:
        with runtime.engine.begin() as connection:
            connection.execute(
                insert(Endpoint),
                [
                    {"app_id": tenant.app_id, "name": "room", "kind": "feishu"}
                    | {"url": server.url, "secret": "room-secret"},
                    {"app_id": tenant.app_id, "name": "hook", "kind": "webhook"}
                    | {"url": server.url, "secret": "whsec_x"},
                ],
            )
            connection.execute(
                insert(Message),
                {
                    "id": message_id,
                    "app_id": tenant.app_id,
                    "status": "dispatched",
                    "recipients": [{"endpoint": "room"}, {"endpoint": "hook"}],
                    "channels": ["chat"],
                    "content": {"title": "Deploy done", "body": "v1.2.3 is live", "url": None},
                    "category": "notification",
                    "priority": "normal",
                    "created_at": now,
                    "updated_at": now,
                },
            )
            connection.execute(
                insert(Delivery),
                [
                    {
                        "id": delivery_id,
                        "message_id": message_id,
                        "app_id": tenant.app_id,
                        "recipient": f"endpoint:{name}",
                        "user_id": None,
                        "address": name,
                        "channel": "chat",
                        "status": "queued",
                        "attempts": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for name, delivery_id in deliveries.items()
                ],
            )
        for delivery_id in deliveries.values():
            payload = {
                "delivery_id": delivery_id,
                "message_id": message_id,
                "app_id": tenant.app_id,
                "channel": "chat",
            }
            publish(runtime, channel_key("chat"), encode(DeliveryPayload(), payload))
        link = AmqpLink(
            AMQP_URL, runtime.topology, consume_queues=runtime.topology.channel_queues("chat")
        )
        channel = ChatChannel(channel_context(runtime, "chat"), timeout=2.0)
        worker = ChannelWorker(runtime, link, channel)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            wait_until(
                lambda: message_status(runtime, message_id) == "partially_failed", 20, "settled"
            )
        finally:
            worker.stop()
            thread.join(20)
            channel.close()
    (received,) = server.received
    assert received.says("v1.2.3 is live")
    with runtime.engine.connect() as connection:
        rows = dict(
            connection.execute(
                select(Delivery.id, Delivery.last_error).where(Delivery.message_id == message_id)
            ).all()
        )
    assert rows[deliveries["room"]] is None
    assert "webhook channel" in (rows[deliveries["hook"]] or "")


def message_status(runtime: Runtime, message_id: str) -> str | None:
    with runtime.engine.connect() as connection:
        return connection.scalar(select(Message.status).where(Message.id == message_id))
