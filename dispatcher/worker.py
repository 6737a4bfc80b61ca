"""The channel worker runtime: claims deliveries, calls the channel, records and retries.

Every channel runs the same loop; the channel module only implements `send`. For a batch, the
worker claims the deliveries in the store (status `sending`, one guarded UPDATE, so two workers
never send the same delivery at once), calls the channel for each, then in one transaction
records `sent`, `retrying` or `failed` with their trace events and settles the message when all
its deliveries are final. A transient failure goes to the retry tier for its attempt and comes
back under its own routing key; one that has used every tier, or a permanent one, is `failed`
and its AMQP message is parked in the dead queue. Sources are acked after all that is durable.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import Future, wait
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from channels.base import Channel, OutboundDelivery, Outcome, Result
from shared.amqp.consumer import BatchConsumer
from shared.amqp.link import AmqpLink, Inbound, Outgoing
from shared.amqp.topology import RETRY_TIERS
from shared.ids import utcnow
from shared.models import Delivery, Message
from shared.payloads import DeliveryPayload, decode
from shared.runtime import Runtime
from shared.statuses import message_outcome
from shared.trace import event_row, record_events

log = structlog.get_logger(__name__)

CONFIRM_TIMEOUT_SECONDS = 30.0
MAX_ATTEMPTS = len(RETRY_TIERS) + 1
#: How long a claim holds before another worker may assume its holder died mid-send.
CLAIM_SECONDS = 10.0
#: Where a delivery claimed by someone else waits before it is looked at again.
BUSY_TIER = "5s"


@dataclass(frozen=True)
class Attempt:
    """One claimed delivery, the AMQP message it came in, and how the channel's send went."""

    source: Inbound
    delivery: OutboundDelivery
    result: Result


class ChannelWorker(BatchConsumer):
    """Consumes `channel.<name>` for one channel; see the module docstring."""

    batch_size = 100

    def __init__(
        self,
        runtime: Runtime,
        link: AmqpLink,
        channel: Channel,
        claim_seconds: float = CLAIM_SECONDS,
    ) -> None:
        super().__init__(link)
        self.runtime = runtime
        self.channel = channel
        self.claim_seconds = claim_seconds
        self._schema = DeliveryPayload()
        self._log = log.bind(channel=channel.name)

    def handle_batch(self, batch: list[Inbound]) -> None:
        by_id: dict[str, Inbound] = {}
        for message in batch:
            try:
                payload = decode(self._schema, message.body)
            except ValueError as error:
                self._log.error("worker.malformed", detail=str(error))
                self.link.nack(message, requeue=False)
                continue
            if payload["delivery_id"] in by_id:
                self.link.ack(message)  # the same delivery twice in one batch
                continue
            by_id[payload["delivery_id"]] = message
        if not by_id:
            return
        with self.runtime.sessions() as session, session.begin():
            claimed = self._claim(session, list(by_id))
            busy = self._busy(session, [i for i in by_id if i not in claimed])
        attempts = [Attempt(by_id[d.delivery_id], d, self._send(d)) for d in claimed.values()]
        with self.runtime.sessions() as session, session.begin():
            follow_ups = self._record(session, attempts)
        for delivery_id in busy:
            source = by_id[delivery_id]
            follow_ups.append((source, self._retry_message(source, BUSY_TIER)))
        self._settle(by_id, follow_ups)

    def _claim(self, session: Session, ids: list[str]) -> dict[str, OutboundDelivery]:
        now = utcnow()
        stale = now - timedelta(seconds=self.claim_seconds)
        claimed_ids = session.scalars(
            update(Delivery)
            .where(
                Delivery.id.in_(ids),
                or_(
                    Delivery.status.in_(("pending", "queued", "retrying")),
                    (Delivery.status == "sending") & (Delivery.updated_at < stale),
                ),
            )
            .values(status="sending", attempts=Delivery.attempts + 1, updated_at=now)
            .returning(Delivery.id)
        ).all()
        if not claimed_ids:
            return {}
        rows = session.execute(
            select(Delivery, Message.content, Message.category)
            .join(Message, Message.id == Delivery.message_id)
            .where(Delivery.id.in_(claimed_ids))
        ).all()
        record_events(
            session,
            [event_row(d.message_id, "sending", d.id, attempt=d.attempts) for d, _c, _k in rows],
        )
        return {
            d.id: OutboundDelivery(
                delivery_id=d.id,
                message_id=d.message_id,
                app_id=d.app_id,
                channel=d.channel,
                user_id=d.user_id,
                address=d.address,
                category=category,
                content=content,
                created_at=d.created_at,
                attempt=d.attempts,
            )
            for d, content, category in rows
        }

    def _busy(self, session: Session, ids: list[str]) -> list[str]:
        """Of the unclaimed ids, those another worker holds right now (the rest are done)."""
        if not ids:
            return []
        return list(
            session.scalars(
                select(Delivery.id).where(Delivery.id.in_(ids), Delivery.status == "sending")
            )
        )

    def _send(self, delivery: OutboundDelivery) -> Result:
        try:
            return self.channel.send(delivery)
        except Exception as error:  # the contract says never, but a bug must not lose the batch
            self._log.exception("worker.channel_raised", delivery_id=delivery.delivery_id)
            return Result.transient(f"{type(error).__name__}: {error}")

    def _record(self, session: Session, attempts: list[Attempt]) -> list[tuple[Inbound, Outgoing]]:
        now = utcnow()
        updates: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        follow_ups: list[tuple[Inbound, Outgoing]] = []
        for attempt in attempts:
            delivery, result = attempt.delivery, attempt.result
            row: dict[str, Any] = {"id": delivery.delivery_id, "updated_at": now}
            if result.outcome is Outcome.SENT:
                row.update(status="sent", sent_at=now, last_error=None)
                events.append(event_row(delivery.message_id, "sent", delivery.delivery_id))
            elif result.outcome is Outcome.TRANSIENT and delivery.attempt < MAX_ATTEMPTS:
                tier = RETRY_TIERS[delivery.attempt - 1][0]
                row.update(status="retrying", last_error=result.detail)
                events.append(
                    event_row(
                        delivery.message_id,
                        "retrying",
                        delivery.delivery_id,
                        error=result.detail,
                        retry_in=tier,
                    )
                )
                follow_ups.append((attempt.source, self._retry_message(attempt.source, tier)))
            else:
                row.update(status="failed", last_error=result.detail)
                events.append(
                    event_row(
                        delivery.message_id,
                        "failed",
                        delivery.delivery_id,
                        error=result.detail,
                        permanent=result.outcome is Outcome.PERMANENT,
                    )
                )
                follow_ups.append((attempt.source, self._dead_message(attempt.source, result)))
            updates.append(row)
            self._log.info(
                "worker.attempt",
                delivery_id=delivery.delivery_id,
                message_id=delivery.message_id,
                app=delivery.app_id,
                stage=row["status"],
                attempt=delivery.attempt,
            )
        if updates:
            session.execute(update(Delivery), updates)
        events += self._settle_messages(session, {a.delivery.message_id for a in attempts})
        record_events(session, events)
        return follow_ups

    def _settle_messages(self, session: Session, message_ids: set[str]) -> list[dict[str, Any]]:
        """Mark messages whose deliveries are all final as completed / failed."""
        if not message_ids:
            return []
        statuses: dict[str, list[str]] = defaultdict(list)
        for message_id, status in session.execute(
            select(Delivery.message_id, Delivery.status).where(Delivery.message_id.in_(message_ids))
        ):
            statuses[message_id].append(status)
        events = []
        now = utcnow()
        for message_id, delivery_statuses in statuses.items():
            outcome = message_outcome(delivery_statuses)
            if outcome is None:
                continue
            changed = session.execute(
                update(Message)
                .where(Message.id == message_id, Message.status == "dispatched")
                .values(status=outcome, updated_at=now)
            )
            if getattr(changed, "rowcount", 0):
                events.append(event_row(message_id, outcome))
        return events

    def _retry_message(self, source: Inbound, tier: str) -> Outgoing:
        return Outgoing(
            source.routing_key,
            source.body,
            headers={"tier": tier},
            exchange=self.runtime.topology.retry_exchange,
        )

    def _dead_message(self, source: Inbound, result: Result) -> Outgoing:
        return Outgoing(
            source.routing_key,
            source.body,
            headers={"x-omnipush-error": result.detail or result.outcome.value},
            exchange=self.runtime.topology.dead_exchange,
        )

    def _settle(
        self, by_id: dict[str, Inbound], follow_ups: list[tuple[Inbound, Outgoing]]
    ) -> None:
        """Ack every source once its follow-up publish (if any) is confirmed."""
        futures: dict[int, Future[None]] = {}
        if follow_ups:
            published = self.link.publish_batch([out for _src, out in follow_ups])
            futures = {
                id(src): future for (src, _out), future in zip(follow_ups, published, strict=True)
            }
            wait(list(futures.values()), timeout=CONFIRM_TIMEOUT_SECONDS)
        for source in by_id.values():
            future = futures.get(id(source))
            if future is None or (future.done() and future.exception() is None):
                self.link.ack(source)
            else:
                self.link.nack(source, requeue=True)
