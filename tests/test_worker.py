"""The channel worker runtime against the real store and broker, with a scripted channel.

The channel here stands in for a provider that fails on cue; everything around it (claims,
records, retry tiers, the dead queue, message settlement) is the real runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update

from channels.base import Channel, ChannelContext, OutboundDelivery, Outcome, Result
from channels.worker import ChannelWorker, channel_context
from shared.amqp.link import AmqpLink
from shared.amqp.topology import channel_key
from shared.ids import utcnow
from shared.models import Delivery, Event, Message
from shared.payloads import DeliveryPayload, decode, encode
from shared.runtime import Runtime
from shared.statuses import message_outcome
from tests.conftest import AMQP_URL, publish, queue_depth
from tests.queued import queued_delivery, running_worker
from tests.stack import wait_until


class ScriptedChannel(Channel):
    """Answers each attempt with the next scripted outcome."""

    name = "web"

    def __init__(self, context: ChannelContext, script: Sequence[Outcome]) -> None:
        super().__init__(context)
        self.script = list(script)
        self.attempts: list[str] = []

    def send(self, delivery: OutboundDelivery) -> Result:
        self.attempts.append(delivery.delivery_id)
        outcome = self.script.pop(0)
        if outcome is Outcome.SENT:
            return Result.sent()
        if outcome is Outcome.DEFERRED:
            return Result.deferred("scripted slow-down", retry_after=3, account="primary")
        return Result(outcome, f"scripted {outcome.value}")


def state(runtime: Runtime, message_id: str, delivery_id: str) -> tuple[str, str, list[str]]:
    with runtime.engine.connect() as connection:
        delivery_status = connection.scalar(
            select(Delivery.status).where(Delivery.id == delivery_id)
        )
        message_status = connection.scalar(select(Message.status).where(Message.id == message_id))
        stages = list(
            connection.scalars(
                select(Event.stage).where(Event.message_id == message_id).order_by(Event.id)
            )
        )
    return str(delivery_status), str(message_status), stages


def payload_of(runtime: Runtime, message_id: str, delivery_id: str) -> dict[str, str]:
    """The AMQP payload of a web delivery of `queued_delivery` (normal priority)."""
    with runtime.engine.connect() as connection:
        app_id = str(connection.scalar(select(Message.app_id).where(Message.id == message_id)))
    return {
        "delivery_id": delivery_id,
        "message_id": message_id,
        "app_id": app_id,
        "channel": "web",
        "priority": "normal",
    }


def test_a_deferred_delivery_waits_in_a_tier_without_using_up_an_attempt(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    channel = ScriptedChannel(channel_context(runtime, "web"), [Outcome.DEFERRED, Outcome.SENT])
    with running_worker(runtime, channel):
        message_id, delivery_id = queued_delivery(runtime)
        wait_until(
            lambda: state(runtime, message_id, delivery_id)[1] == "completed", 20, "completed"
        )
    with runtime.engine.connect() as connection:
        attempts = connection.scalar(select(Delivery.attempts).where(Delivery.id == delivery_id))
        details = list(
            connection.scalars(
                select(Event.detail).where(Event.delivery_id == delivery_id).order_by(Event.id)
            )
        )
    assert channel.attempts == [delivery_id, delivery_id]
    # The slow-down cost no attempt: the send that went through is the first.
    assert attempts == 1 and details[-1]["attempt"] == 1
    assert details[0]["deferred"] is True and details[0]["account"] == "primary"
    assert details[0]["retry_in"] == "5s"


def test_a_transient_failure_is_retried_through_a_delay_tier_then_sent(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    channel = ScriptedChannel(channel_context(runtime, "web"), [Outcome.TRANSIENT, Outcome.SENT])
    with running_worker(runtime, channel):
        message_id, delivery_id = queued_delivery(runtime)
        wait_until(
            lambda: state(runtime, message_id, delivery_id)[0] == "sent", 20, "the retry to succeed"
        )
        wait_until(
            lambda: state(runtime, message_id, delivery_id)[1] == "completed", 10, "completed"
        )
    _delivery, _message, stages = state(runtime, message_id, delivery_id)
    assert stages == ["retrying", "sent", "completed"]
    assert channel.attempts == [delivery_id, delivery_id]
    with runtime.engine.connect() as connection:
        details = list(
            connection.scalars(select(Event.detail).where(Event.delivery_id == delivery_id))
        )
    assert details[0]["retry_in"] == "5s" and details[0]["attempt"] == 1
    assert details[1]["attempt"] == 2


def test_a_permanent_failure_fails_the_message_and_parks_it_in_the_dead_queue(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    channel = ScriptedChannel(channel_context(runtime, "web"), [Outcome.PERMANENT])
    with running_worker(runtime, channel):
        message_id, delivery_id = queued_delivery(runtime)
        wait_until(lambda: state(runtime, message_id, delivery_id)[1] == "failed", 20, "failed")
    delivery_status, _message, stages = state(runtime, message_id, delivery_id)
    assert delivery_status == "failed"
    assert stages == ["failed", "failed"]
    assert channel.attempts == [delivery_id]
    wait_until(lambda: queue_depth(runtime.topology.dead_queue) == 1, 10, "the dead letter")


def test_a_delivery_whose_message_expired_is_not_sent(isolated_runtime: Runtime) -> None:
    runtime = isolated_runtime
    channel = ScriptedChannel(channel_context(runtime, "web"), [Outcome.SENT])
    with running_worker(runtime, channel):
        message_id, delivery_id = queued_delivery(
            runtime, expires_at=utcnow() - timedelta(seconds=1)
        )
        wait_until(lambda: state(runtime, message_id, delivery_id)[1] == "expired", 20, "expired")
    delivery_status, _message, stages = state(runtime, message_id, delivery_id)
    assert (delivery_status, stages) == ("expired", ["expired", "expired"])
    assert channel.attempts == []
    assert queue_depth(runtime.topology.dead_queue) == 0


def test_a_redelivered_delivery_that_was_sent_is_not_sent_again(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    channel = ScriptedChannel(channel_context(runtime, "web"), [Outcome.SENT])
    with running_worker(runtime, channel):
        message_id, delivery_id = queued_delivery(runtime)
        wait_until(lambda: state(runtime, message_id, delivery_id)[0] == "sent", 20, "sent")
        # The same AMQP message again, as a broker redelivery would bring it.
        payload = payload_of(runtime, message_id, delivery_id)
        publish(runtime, channel_key("web"), encode(DeliveryPayload(), payload))
        web_queue = runtime.topology.channel_queue("web")
        wait_until(lambda: queue_depth(web_queue) == 0, 10, "the duplicate to be consumed")
    assert channel.attempts == [delivery_id]


def test_a_claim_left_by_a_worker_that_died_is_respected_until_stale_then_sent_once(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    channel = ScriptedChannel(channel_context(runtime, "web"), [Outcome.SENT])
    claim_seconds = 2.0
    claimed_at = utcnow()
    with running_worker(runtime, channel, claim_seconds=claim_seconds):
        message_id, delivery_id = queued_delivery(runtime, claimed_at=claimed_at)
        wait_until(
            lambda: state(runtime, message_id, delivery_id)[1] == "completed",
            30,
            "the stale claim to be taken over and sent",
        )
    assert channel.attempts == [delivery_id]
    with runtime.engine.connect() as connection:
        attempts, sent_at = connection.execute(
            select(Delivery.attempts, Delivery.sent_at).where(Delivery.id == delivery_id)
        ).one()
        (sent,) = connection.scalars(
            select(Event.detail).where(Event.delivery_id == delivery_id, Event.stage == "sent")
        )
    # Left alone while the claim could still be a live worker's; the second attempt after.
    assert sent_at is not None and sent_at >= claimed_at + timedelta(seconds=claim_seconds)
    assert attempts == 2 and sent["attempt"] == 2


@pytest.mark.parametrize(
    ("statuses", "outcome"),
    [
        (["sent"], "completed"),
        (["sent", "read", "delivered"], "completed"),
        (["sent", "failed"], "partially_failed"),
        (["failed", "suppressed"], "failed"),
        (["sent", "suppressed"], "completed"),
        (["suppressed", "deduplicated", "throttled"], "completed"),
        (["canceled", "canceled"], "canceled"),
        (["deferred"], None),
        (["expired", "expired"], "expired"),
        (["expired", "failed"], "failed"),
        (["expired", "sent"], "partially_failed"),
        (["sent", "retrying"], None),
        (["queued"], None),
        ([], None),
    ],
)
def test_a_message_settles_only_when_every_delivery_is_final(
    statuses: list[str], outcome: str | None
) -> None:
    assert message_outcome(statuses) == outcome


class ReceiptChannel(ScriptedChannel):
    """Sends, and names each send as a provider would."""

    def send(self, delivery: OutboundDelivery) -> Result:
        self.attempts.append(delivery.delivery_id)
        return Result.sent(receipt=f"receipt-of-{delivery.delivery_id}")


def receipt_of(runtime: Runtime, delivery_id: str) -> str | None:
    with runtime.engine.connect() as connection:
        receipt: str | None = connection.scalar(
            select(Delivery.receipt).where(Delivery.id == delivery_id)
        )
        return receipt


def test_a_send_s_receipt_is_kept_on_its_delivery(isolated_runtime: Runtime) -> None:
    runtime = isolated_runtime
    channel = ReceiptChannel(channel_context(runtime, "web"), [])
    with running_worker(runtime, channel):
        message_id, delivery_id = queued_delivery(runtime)
        wait_until(lambda: state(runtime, message_id, delivery_id)[0] == "sent", 20, "sent")
    assert receipt_of(runtime, delivery_id) == f"receipt-of-{delivery_id}"


class AcknowledgedMidSendChannel(ReceiptChannel):
    """Sends with a receipt, and the browser acknowledges the delivery before the worker has
    recorded the send (the feed is that fast)."""

    def __init__(self, context: ChannelContext, runtime: Runtime) -> None:
        super().__init__(context, [])
        self.runtime = runtime

    def send(self, delivery: OutboundDelivery) -> Result:
        with self.runtime.engine.begin() as connection:
            connection.execute(
                update(Delivery)
                .where(Delivery.id == delivery.delivery_id)
                .values(status="delivered", delivered_at=utcnow(), updated_at=utcnow())
            )
        return super().send(delivery)


def test_a_delivery_acknowledged_mid_send_stays_acknowledged_and_gets_its_receipt(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    channel = AcknowledgedMidSendChannel(channel_context(runtime, "web"), runtime)
    with running_worker(runtime, channel):
        message_id, delivery_id = queued_delivery(runtime)
        wait_until(lambda: receipt_of(runtime, delivery_id), 20, "its receipt")
    assert state(runtime, message_id, delivery_id)[0] == "delivered"
    assert receipt_of(runtime, delivery_id) == f"receipt-of-{delivery_id}"


class HeldChannel(ScriptedChannel):
    """Sends only once `release` is set, so a test can act while the worker is mid-send."""

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context, [Outcome.SENT])
        self.release = threading.Event()

    def send(self, delivery: OutboundDelivery) -> Result:
        self.attempts.append(delivery.delivery_id)
        self.release.wait(20)
        return Result.sent()


def test_a_large_message_is_completed_when_its_last_delivery_ends_as_its_last_step_commits(
    isolated_runtime: Runtime,
) -> None:
    """A large message's pages are published as they commit, so its last delivery may end
    while the dispatcher's last step, holding the message's row, sees it still sending and
    marks the message dispatched. The worker waits for that step before it reads what is
    final, so the message is completed all the same (it would stay dispatched for good)."""
    runtime = isolated_runtime
    message_id, delivery_id = queued_delivery(runtime)
    with runtime.engine.begin() as connection:
        connection.execute(update(Message).where(Message.id == message_id).values(status="queued"))
    channel = HeldChannel(channel_context(runtime, "web"))
    with running_worker(runtime, channel), runtime.engine.connect() as last_step:
        wait_until(lambda: channel.attempts == [delivery_id], 20, "the worker to be sending")
        transaction = last_step.begin()
        # What the dispatcher's last step does: lock the message, find a delivery not final,
        # mark the message dispatched.
        last_step.execute(select(Message.id).where(Message.id == message_id).with_for_update())
        assert last_step.scalar(select(Delivery.status).where(Delivery.id == delivery_id)) == (
            "sending"
        )
        last_step.execute(
            update(Message).where(Message.id == message_id).values(status="dispatched")
        )
        step = last_step.scalar(text("SELECT pg_backend_pid()"))
        channel.release.set()
        wait_until(
            lambda: (
                waiting_on(runtime, step) > 0
                or state(runtime, message_id, delivery_id)[0] == "sent"
            ),
            20,
            "the worker to record the send or wait for the step",
        )
        transaction.commit()
        wait_until(
            lambda: state(runtime, message_id, delivery_id)[1] == "completed", 10, "completed"
        )


def waiting_on(runtime: Runtime, pid: int) -> int:
    """How many sessions wait for a lock that the session `pid` holds."""
    with runtime.engine.connect() as connection:
        waiting = connection.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
            {"pid": pid},
        )
    return int(waiting or 0)


def test_a_failed_send_handed_over_in_process_comes_back_as_the_retry_of_its_delivery(
    isolated_runtime: Runtime,
) -> None:
    """`send_now`, the dispatcher's own web sends of deliveries it wrote taken: one whose
    send failed is recorded as retrying, and its follow-up is that delivery's own AMQP
    message, to the retry tier."""
    runtime = isolated_runtime
    message_id, delivery_id = queued_delivery(runtime, claimed_at=utcnow())
    payload = payload_of(runtime, message_id, delivery_id)
    channel = ScriptedChannel(channel_context(runtime, "web"), [Outcome.TRANSIENT])
    # Never started: sending in process publishes nothing itself.
    worker = ChannelWorker(runtime, AmqpLink(AMQP_URL, runtime.topology), channel)
    follow_ups = worker.send_now([payload])
    retry = follow_ups[delivery_id]
    assert retry.exchange == runtime.topology.retry_exchange
    assert retry.routing_key == channel_key("web", "normal")
    assert decode(DeliveryPayload(), retry.body) == payload
    assert channel.attempts == [delivery_id]
    assert state(runtime, message_id, delivery_id)[0] == "retrying"
