"""Fallback: a recipient that one channel fails for good is tried on the next channel.

The decision is a table; the runtime tests run a pager channel that always fails (or finds no
phone number), the real web channel and the real relay, against the real store and broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pika
import pytest
from sqlalchemy import func, insert, select

from channels.base import Channel, ChannelContext, OutboundDelivery, Outcome, Result
from channels.push import PushChannel
from channels.sms import SmsChannel
from channels.vapid import VapidKey
from channels.web import WebChannel
from channels.worker import channel_context
from dispatcher.fallback_choice import next_channel
from shared.config_file import Delay
from shared.models import Delivery, Device, Event, Message, OutboxEntry, User
from shared.runtime import Runtime
from shared.settings import Settings
from shared.statuses import standing
from tests.channel_harness import Answer
from tests.conftest import AMQP_URL, new_tenant, queue_depth, queue_prefix
from tests.queued import queued_delivery, running_relay, running_worker
from tests.rigs.push_webpush import LOOPBACK, SUBJECT
from tests.sms_providers import GatewayServer, sms_settings
from tests.stack import wait_until
from tests.webpush_receiver import WebPushReceiver

ONE_SECOND = Delay("1s", 1.0)
REACHES = {
    "web": frozenset({"user"}),
    "push": frozenset({"user"}),
    "pager": frozenset({"user", "phone"}),
    "sms": frozenset({"user", "phone"}),
    "email": frozenset({"user", "email"}),
}


@pytest.mark.parametrize(
    ("failed", "kind", "fallback", "used", "expected"),
    [
        ("push", "user", ["push", "sms"], {"push"}, "sms"),
        ("web", "user", ["pager", "sms"], {"web"}, "pager"),
        ("pager", "user", ["pager", "sms"], {"web", "pager"}, "sms"),
        ("sms", "user", ["pager", "sms"], {"pager", "sms"}, None),
        ("web", "user", ["sms"], {"web", "sms"}, None),
        ("web", "user", None, {"web"}, None),
        ("web", "user", [], {"web"}, None),
        # A bare phone number cannot go to the browser inbox or to email.
        ("pager", "phone", ["web", "email", "sms"], {"pager"}, "sms"),
        ("sms", "email", ["sms", "pager"], {"sms"}, None),
        # A channel this installation does not have reaches nobody.
        ("web", "user", ["carrier-pigeon", "sms"], {"web"}, "sms"),
    ],
    ids=[
        "next-in-list",
        "first-unused",
        "skips-used",
        "list-exhausted",
        "already-used-by-the-message",
        "no-fallback",
        "empty-fallback",
        "skips-channels-not-reaching-a-phone",
        "none-reaches-an-email",
        "skips-unknown",
    ],
)
def test_the_next_channel_is_the_first_unused_one_that_reaches_the_recipient(
    failed: str, kind: str, fallback: list[str] | None, used: set[str], expected: str | None
) -> None:
    assert next_channel(failed, kind, fallback, used, REACHES) == expected


@pytest.mark.parametrize(
    ("rows", "statuses"),
    [
        ([("a", "failed", None), ("b", "sent", "a")], ["sent"]),
        ([("a", "failed", None), ("b", "failed", "a"), ("c", "sent", "b")], ["sent"]),
        ([("a", "failed", None), ("b", "queued", "a")], ["queued"]),
        ([("a", "failed", None), ("b", "sent", None)], ["failed", "sent"]),
        ([("a", "failed", None), ("b", "suppressed", "a")], ["failed", "suppressed"]),
    ],
    ids=["replaced", "chain", "pending", "no-fallback", "withheld-fallback"],
)
def test_a_replaced_delivery_gives_way_to_its_fallback(
    rows: list[tuple[str, str, str | None]], statuses: list[str]
) -> None:
    assert standing(rows) == statuses


class Pager(Channel):
    """A test channel to phone numbers whose provider refuses every one of them."""

    name = "pager"
    reaches = frozenset({"phone"})
    address_kind = "phone"

    def __init__(self, context: ChannelContext, outcome: Outcome) -> None:
        super().__init__(context)
        self.outcome = outcome
        self.attempts: list[str] = []

    def send(self, delivery: OutboundDelivery) -> Result:
        self.attempts.append(delivery.delivery_id)
        if self.outcome is Outcome.TRANSIENT:
            return Result.transient("carrier unavailable")
        return Result.permanent("number blocked by the carrier")


@pytest.fixture
def two_channels(isolated_runtime: Runtime) -> Iterator[Runtime]:
    """The runtime with a `pager` queue beside the web one and a single retry tier of a
    second, so that a delivery runs out of retries quickly (deleted afterwards)."""
    topology = replace(
        isolated_runtime.topology, channels=("web", "pager"), retry_delays=(ONE_SECOND,)
    )
    runtime = replace(isolated_runtime, topology=topology)
    yield runtime
    # Its own tiers (and their jitter slots) too: `queue_prefix` knows only the default ones.
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    topology.delete_blocking(connection.channel())
    connection.close()


def paged_message(
    runtime: Runtime,
    phone: str | None,
    priority: str = "normal",
    category: str = "notification",
    preferences: dict[str, dict[str, bool]] | None = None,
) -> tuple[str, str]:
    """A dispatched message to user gina on the pager, falling back to the web inbox."""
    tenant = new_tenant(runtime)
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(User),
            {
                "app_id": tenant.app_id,
                "user_id": "gina",
                "phone": phone,
                "preferences": preferences or {},
            },
        )
    return queued_delivery(
        runtime,
        "pager",
        app_id=tenant.app_id,
        fallback=["pager", "web"],
        content={"title": "Your code is 1234"},
        priority=priority,
        category=category,
    )


def message_status(runtime: Runtime, message_id: str) -> str | None:
    with runtime.engine.connect() as connection:
        return connection.scalar(select(Message.status).where(Message.id == message_id))


def fell_back(runtime: Runtime, message_id: str) -> bool:
    with runtime.engine.connect() as connection:
        found = connection.scalar(
            select(Event.id).where(Event.message_id == message_id, Event.stage == "fallback")
        )
    return found is not None


@pytest.mark.parametrize(
    ("phone", "outcome", "pager_attempts", "error"),
    [
        ("+33612345678", Outcome.PERMANENT, 1, "number blocked by the carrier"),
        ("+33612345678", Outcome.TRANSIENT, 2, "carrier unavailable"),
        (None, Outcome.PERMANENT, 0, "the user has no phone address"),
    ],
    ids=["permanent-failure", "retries-used-up", "no-address"],
)
def test_a_recipient_the_pager_fails_is_reached_in_the_web_inbox_and_the_message_completes(
    two_channels: Runtime, phone: str | None, outcome: Outcome, pager_attempts: int, error: str
) -> None:
    runtime = two_channels
    pager = Pager(channel_context(runtime, "pager"), outcome)
    with running_relay(runtime), running_worker(runtime, pager, reaches=REACHES):
        message_id, pager_delivery = paged_message(runtime, phone)
        wait_until(lambda: fell_back(runtime, message_id), 20, "the fallback")
        # The web delivery is pending (no web worker yet): the message is not final.
        assert message_status(runtime, message_id) == "dispatched"
        with running_worker(runtime, WebChannel(channel_context(runtime, "web")), reaches=REACHES):
            wait_until(lambda: message_status(runtime, message_id) == "completed", 20, "completed")
    assert pager.attempts == [pager_delivery] * pager_attempts
    with runtime.engine.connect() as connection:
        deliveries = {
            row.channel: row
            for row in connection.execute(select(Delivery).where(Delivery.message_id == message_id))
        }
        outbox = connection.execute(
            select(OutboxEntry.routing_key, OutboxEntry.published_at).where(
                OutboxEntry.message_id == message_id
            )
        ).all()
        stages = list(
            connection.execute(
                select(Event.stage, Event.delivery_id, Event.detail)
                .where(Event.message_id == message_id)
                .order_by(Event.id)
            )
        )
    web = deliveries["web"]
    # Published through the outbox, marked once confirmed, and not a second `queued` message.
    assert [(row.routing_key, row.published_at is not None) for row in outbox] == [
        ("channel.web", True)
    ]
    assert (deliveries["pager"].status, deliveries["pager"].last_error) == ("failed", error)
    assert (web.status, web.recipient, web.user_id, web.fallback_of) == (
        "sent",
        "user:gina",
        "gina",
        pager_delivery,
    )
    retried = ["retrying"] * (pager_attempts - 1)
    assert [stage for stage, _d, _detail in stages] == [
        *retried,
        "failed",
        "fallback",
        "sent",
        "completed",
    ]
    _stage, traced_delivery, detail = stages[len(retried) + 1]
    assert traced_delivery == pager_delivery
    assert detail == {"from": "pager", "to": "web", "delivery": web.id}


def test_a_fallback_delivery_is_held_to_the_recipients_preferences_too(
    two_channels: Runtime,
) -> None:
    runtime = two_channels
    pager = Pager(channel_context(runtime, "pager"), Outcome.PERMANENT)
    opted_out = {"marketing": {"web": False}}
    with running_worker(runtime, pager, reaches=REACHES):
        message_id, pager_delivery = paged_message(
            runtime, "+33612345678", category="marketing", preferences=opted_out
        )
        wait_until(lambda: message_status(runtime, message_id) == "failed", 20, "the outcome")
    with runtime.engine.connect() as connection:
        web = connection.execute(
            select(Delivery.status, Delivery.last_error, Delivery.fallback_of).where(
                Delivery.message_id == message_id, Delivery.channel == "web"
            )
        ).one()
        stages = list(
            connection.scalars(
                select(Event.stage).where(Event.message_id == message_id).order_by(Event.id)
            )
        )
        outbox = connection.scalar(select(func.count()).where(OutboxEntry.message_id == message_id))
    # The web inbox takes over, and the user's opt-out of marketing there stops it.
    assert web == ("suppressed", "the user opted out of marketing on web", pager_delivery)
    assert stages == ["failed", "preferences", "fallback", "failed"]
    assert outbox == 0


def test_the_fallback_delivery_of_a_high_message_goes_to_the_high_lane_of_its_channel(
    two_channels: Runtime,
) -> None:
    runtime = two_channels
    pager = Pager(channel_context(runtime, "pager"), Outcome.PERMANENT)
    high, normal, _low = runtime.topology.channel_queues("web")
    with running_relay(runtime), running_worker(runtime, pager, reaches=REACHES):
        message_id, _pager_delivery = paged_message(runtime, "+33612345678", priority="high")
        wait_until(lambda: queue_depth(high) == 1, 20, "the fallback delivery published")
    assert queue_depth(normal) == 0
    with runtime.engine.connect() as connection:
        keys = list(
            connection.scalars(
                select(OutboxEntry.routing_key).where(OutboxEntry.message_id == message_id)
            )
        )
    assert keys == ["channel.web.high"]


def test_a_user_whose_push_device_is_gone_gets_the_message_by_sms(
    inprocess_settings: Settings,
) -> None:
    key = VapidKey.generate()
    with (
        WebPushReceiver(SUBJECT, key.public_b64()) as push_service,
        GatewayServer() as gateway,
        queue_prefix() as prefix,
    ):
        push_service.answer(Answer.REJECT_ADDRESS)
        settings = sms_settings(
            inprocess_settings.with_overrides(queue_prefix=prefix),
            gateway.account("gateway"),
            webpush={"vapid_private_key": key.private_b64(), "vapid_subject": SUBJECT},
        ).with_overrides(outbound_allow=LOOPBACK)
        runtime = Runtime.build(settings, channels=("push", "sms"))
        push = PushChannel(channel_context(runtime, "push"))
        sms = SmsChannel(channel_context(runtime, "sms"))
        try:
            message_id = pushed_message(runtime, push_service.subscribe().as_json())
            with (
                running_relay(runtime),
                running_worker(runtime, push, reaches=REACHES),
                running_worker(runtime, sms, reaches=REACHES),
            ):
                wait_until(lambda: message_status(runtime, message_id) == "completed", 30, "done")
            with runtime.engine.connect() as connection:
                deliveries = {
                    row.channel: row
                    for row in connection.execute(
                        select(Delivery).where(Delivery.message_id == message_id)
                    )
                }
                stages = [
                    (stage, detail)
                    for stage, detail in connection.execute(
                        select(Event.stage, Event.detail)
                        .where(Event.message_id == message_id)
                        .order_by(Event.id)
                    )
                ]
        finally:
            push.close()
            sms.close()
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            runtime.topology.delete_blocking(connection.channel())
            connection.close()
            runtime.close()
    assert len(push_service.received) == 1
    assert [text.id for text in gateway.received] == [deliveries["sms"].id]
    assert deliveries["push"].status == "failed" and deliveries["sms"].status == "sent"
    assert deliveries["sms"].fallback_of == deliveries["push"].id
    names = [stage for stage, _detail in stages]
    assert names.index("device_removed") < names.index("fallback") < names.index("sent")
    assert dict(stages)["fallback"]["from"] == "push"
    assert dict(stages)["fallback"]["to"] == "sms"


def pushed_message(runtime: Runtime, subscription: dict[str, object]) -> str:
    """A dispatched push message to user wendy (one Web Push device and a phone), falling back
    to SMS, published to the push queue."""
    tenant = new_tenant(runtime)
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(User), {"app_id": tenant.app_id, "user_id": "wendy", "phone": "+33612345678"}
        )
        connection.execute(
            insert(Device),
            {
                "app_id": tenant.app_id,
                "user_id": "wendy",
                "platform": "webpush",
                "subscription": subscription,
            },
        )
    message_id, _delivery_id = queued_delivery(
        runtime,
        "push",
        app_id=tenant.app_id,
        user_id="wendy",
        fallback=["push", "sms"],
        content={"title": "Your parcel", "body": "It arrives today."},
    )
    return message_id
