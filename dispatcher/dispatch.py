"""The dispatcher: expands each queued message into deliveries and hands them to the channels.

For a batch of messages it writes one delivery row per recipient and channel in one
transaction, publishes one AMQP message per delivery to `channel.<name>`, and acks each source
message only after all of its deliveries are confirmed by the broker. A redelivered message
finds its deliveries already written and publishes the unsent ones again; the channel workers
make that harmless.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from concurrent.futures import Future, wait
from typing import Any

import structlog
from sqlalchemy import Connection, bindparam, select, tuple_, update

from channels.registry import channel_classes
from dispatcher.targets import delivery_targets
from shared.amqp.consumer import BatchConsumer
from shared.amqp.link import AmqpLink, Inbound, Outgoing
from shared.amqp.topology import channel_key
from shared.db import insert_for
from shared.ids import new_id, utcnow
from shared.models import Delivery, Message, Subscription, table_of
from shared.payloads import DeliveryPayload, DispatchPayload, decode, encode
from shared.runtime import Runtime
from shared.trace import event_row, record_events

log = structlog.get_logger(__name__)

CONFIRM_TIMEOUT_SECONDS = 30.0
# A scheduled message is only in the queue once it is due; the relay may mark it after this reads.
DISPATCHABLE = ("accepted", "scheduled", "queued", "dispatched")

# The dispatcher's statements, built once (building SQL costs more than running it here).
_D = table_of(Delivery)
_M = table_of(Message)
_DISPATCHABLE = (
    select(_M.c.id, _M.c.app_id, _M.c.status, _M.c.recipients, _M.c.channels, _M.c.expires_at)
    .where(_M.c.id.in_(bindparam("ids", expanding=True)), _M.c.status.in_(DISPATCHABLE))
    .order_by(_M.c.id)
)
_MARK_DISPATCHED = (
    update(_M)
    .where(_M.c.id.in_(bindparam("ids", expanding=True)))
    .values(status="dispatched", updated_at=bindparam("now"))
)
# INSERT ... ON CONFLICT DO NOTHING: a redelivered message never fails on its existing rows.
# One per store dialect; RETURNING says which rows were new.
_INSERT_DELIVERIES = {
    dialect: insert_for(dialect, _D)
    .on_conflict_do_nothing()
    .returning(_D.c.id, _D.c.message_id, _D.c.app_id, _D.c.channel)
    for dialect in ("postgresql", "sqlite")
}
_MARK_FINISHED = (
    update(_M)
    .where(_M.c.id.in_(bindparam("ids", expanding=True)))
    .values(status=bindparam("status"), updated_at=bindparam("now"))
)
_S = table_of(Subscription)
_TOPIC_MEMBERS = select(_S.c.app_id, _S.c.topic_key, _S.c.user_id)
_PENDING = (
    select(_D.c.id, _D.c.message_id, _D.c.app_id, _D.c.channel)
    .where(
        _D.c.message_id.in_(bindparam("ids", expanding=True)),
        _D.c.status.in_(("pending", "queued")),
    )
    .order_by(_D.c.id)
)


def topic_members(
    connection: Connection, topics: set[tuple[str, str]]
) -> dict[tuple[str, str], list[str]]:
    """(app_id, topic key) -> its subscribers' user ids, now, for every topic named."""
    members: dict[tuple[str, str], list[str]] = defaultdict(list)
    if topics:
        for app_id, key, user_id in connection.execute(
            _TOPIC_MEMBERS.where(tuple_(_S.c.app_id, _S.c.topic_key).in_(list(topics)))
        ):
            members[(app_id, key)].append(user_id)
    return members


def subscribers_of(members: dict[tuple[str, str], list[str]], app_id: str, topic: str) -> list[str]:
    return members.get((app_id, topic), [])


class DispatchConsumer(BatchConsumer):
    """Consumes `dispatch`; see the module docstring."""

    def __init__(self, runtime: Runtime, link: AmqpLink) -> None:
        super().__init__(link)
        self.runtime = runtime
        self._in = DispatchPayload()
        self._out = DeliveryPayload()
        self._reaches = {name: cls.reaches for name, cls in channel_classes().items()}

    def handle_batch(self, batch: list[Inbound]) -> None:
        wanted: dict[str, list[Inbound]] = defaultdict(list)
        for message in batch:
            try:
                payload = decode(self._in, message.body)
            except ValueError as error:
                log.error("dispatch.malformed", detail=str(error))
                self.link.nack(message, requeue=False)  # to the dead queue, not lost
                continue
            wanted[payload["message_id"]].append(message)
        if not wanted:
            return
        with self.runtime.engine.begin() as connection:
            to_publish = self._expand(connection, list(wanted))
        ordered = [(mid, d) for mid in wanted for d in to_publish.get(mid, [])]
        futures = self.link.publish_batch(
            [Outgoing(channel_key(d["channel"]), encode(self._out, d)) for _mid, d in ordered]
        )
        per_message: dict[str, list[Future[None]]] = {mid: [] for mid in wanted}
        for (mid, _delivery), future in zip(ordered, futures, strict=True):
            per_message[mid].append(future)
        wait([f for fs in per_message.values() for f in fs], timeout=CONFIRM_TIMEOUT_SECONDS)
        for message_id, sources in wanted.items():
            confirmed = all(f.done() and f.exception() is None for f in per_message[message_id])
            for source in sources:
                if confirmed:
                    self.link.ack(source)
                else:
                    self.link.nack(source, requeue=True)
        log.info("dispatch.batch", messages=len(wanted), deliveries=len(ordered))

    def _expand(
        self, connection: Connection, message_ids: list[str]
    ) -> dict[str, list[dict[str, str]]]:
        """Write missing deliveries; return, per message, the deliveries still to be sent."""
        # On PostgreSQL the rows stay locked until commit, so a cancel either lands before this
        # batch reads them (and they are skipped) or waits and finds them dispatched.
        postgres = connection.dialect.name == "postgresql"
        dispatchable = _DISPATCHABLE.with_for_update() if postgres else _DISPATCHABLE
        messages = connection.execute(dispatchable, {"ids": message_ids}).all()
        now = utcnow()
        rows: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        undispatched = [m for m in messages if m.status != "dispatched"]
        # A message whose expiry passed while it waited (scheduled, or queued behind others)
        # is not sent at all.
        expired = [m.id for m in undispatched if m.expires_at is not None and m.expires_at <= now]
        fresh = [m for m in undispatched if m.id not in expired]
        members = topic_members(
            connection,
            {(m.app_id, r["topic"]) for m in fresh for r in m.recipients if "topic" in r},
        )
        for message in fresh:
            targets = delivery_targets(
                message.recipients,
                message.channels,
                functools.partial(subscribers_of, members, message.app_id),
                self._reaches,
            )
            rows.extend(
                {
                    "id": new_id("dlv"),
                    "message_id": message.id,
                    "app_id": message.app_id,
                    "recipient": target.recipient,
                    "user_id": target.user_id,
                    "address": target.address,
                    "channel": target.channel,
                    "status": "queued",
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for target in targets
            )
            events.append(event_row(message.id, "dispatched", deliveries=len(targets)))
        insert_rows = _INSERT_DELIVERIES[connection.dialect.name]
        inserted = connection.execute(insert_rows, rows).all() if rows else []
        record_events(connection, events)
        if fresh:
            connection.execute(_MARK_DISPATCHED, {"ids": [m.id for m in fresh], "now": now})
        # A message whose topics have no subscribers has nothing to wait for.
        with_deliveries = {row["message_id"] for row in rows}
        empty = [m.id for m in fresh if m.id not in with_deliveries]
        for status, ids in (("completed", empty), ("expired", expired)):
            if ids:
                connection.execute(_MARK_FINISHED, {"ids": ids, "now": now, "status": status})
                record_events(connection, [event_row(mid, status, deliveries=0) for mid in ids])
        # A message whose rows were all written just now needs no lookup; one seen before (a
        # redelivery) or raced by another dispatcher reads back what is still to be sent.
        expected = Counter(row["message_id"] for row in rows)
        written = Counter(row.message_id for row in inserted)
        recheck = {
            m.id for m in messages if m.status == "dispatched" or written[m.id] != expected[m.id]
        }
        pending = [row for row in inserted if row.message_id not in recheck]
        if recheck:
            pending += connection.execute(_PENDING, {"ids": list(recheck)}).all()
        pending.sort(key=lambda row: row.id)
        result: dict[str, list[dict[str, str]]] = defaultdict(list)
        for delivery_id, message_id, app_id, channel in pending:
            result[message_id].append(
                {
                    "delivery_id": delivery_id,
                    "message_id": message_id,
                    "app_id": app_id,
                    "channel": channel,
                }
            )
        return result
