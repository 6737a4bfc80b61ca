"""Fallback: a recipient that one channel cannot reach is tried on the next channel of the list.

A message may carry `"fallback": ["push", "sms"]`. When a delivery to a recipient fails for good
(a permanent failure, a transient one out of retries, or no address on the channel), the first
channel of that list that the message has not used for that recipient yet, and that reaches
that kind of recipient, takes over: a new delivery row on that channel for the same recipient
(its `fallback_of` names the failed one), an outbox row that the relay publishes to the
channel's queue (in the lane of the message's priority), and a `fallback` trace event naming
both channels, all in the transaction that records the failure. The message cannot settle
while that delivery is pending, and once it is final, the failed delivery it replaced no longer
counts towards the message's outcome: a recipient reached by SMS after push failed makes the
message `completed`.

`next_channel` is the decision, a pure function; `fall_back` writes what it decides.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select

from channels.base import OutboundDelivery
from shared.amqp.topology import channel_key
from shared.db import insert_for
from shared.ids import new_id
from shared.models import Delivery, Message, OutboxEntry, table_of
from shared.trace import event_row

_D = table_of(Delivery)
_M = table_of(Message)
_FALLBACKS = select(_M.c.id, _M.c.fallback).where(
    _M.c.id.in_(bindparam("ids", expanding=True)), _M.c.fallback.is_not(None)
)
_TARGETS = select(
    _D.c.id, _D.c.message_id, _D.c.recipient, _D.c.user_id, _D.c.address, _D.c.channel
).where(_D.c.message_id.in_(bindparam("ids", expanding=True)))
# A failure recorded twice (a stale claim retaken) still makes one fallback delivery.
_INSERT = {
    dialect: insert_for(dialect, _D).on_conflict_do_nothing().returning(_D.c.id)
    for dialect in ("postgresql", "sqlite")
}
_OUTBOX = insert(table_of(OutboxEntry))


def recipient_kind(recipient: str) -> str:
    """The kind of a delivery's recipient key (`user:alice` -> `user`, `email:...` -> `email`),
    as `channels.registry.reach_table` names what a channel reaches."""
    return recipient.partition(":")[0]


def next_channel(
    failed_channel: str,
    kind: str,
    fallback: Sequence[str] | None,
    used: Collection[str],
    reaches: Mapping[str, frozenset[str]],
) -> str | None:
    """The channel that takes over a recipient of `kind` whose delivery on `failed_channel`
    failed for good: the first of `fallback` not `used` for that recipient yet that reaches
    such a recipient; None when there is none."""
    for channel in fallback or ():
        if channel == failed_channel or channel in used:
            continue
        if kind in reaches.get(channel, frozenset()):
            return channel
    return None


def standing(deliveries: Iterable[tuple[str, str, str | None]]) -> list[str]:
    """The statuses that make a message's outcome, of its (id, status, fallback_of) rows: a
    delivery that a fallback delivery replaced gives way to it."""
    rows = list(deliveries)
    replaced = {fallback_of for _id, _status, fallback_of in rows if fallback_of is not None}
    return [status for delivery_id, status, _of in rows if delivery_id not in replaced]


def fall_back(
    connection: Connection,
    failed: Sequence[OutboundDelivery],
    reaches: Mapping[str, frozenset[str]],
    now: datetime,
) -> list[dict[str, Any]]:
    """Write the fallback deliveries of `failed` (deliveries that failed for good) in the
    caller's transaction; the `fallback` events to record with them."""
    message_ids = list({d.message_id for d in failed})
    if not message_ids:
        return []
    fallbacks: dict[str, list[str]] = {
        message_id: fallback
        for message_id, fallback in connection.execute(_FALLBACKS, {"ids": message_ids})
    }
    if not fallbacks:
        return []
    rows = connection.execute(_TARGETS, {"ids": list(fallbacks)}).all()
    by_id = {row.id: row for row in rows}
    used: dict[tuple[str, str], set[str]] = defaultdict(set)
    for target in rows:
        used[(target.message_id, target.recipient)].add(target.channel)
    events = []
    for delivery in failed:
        row = by_id.get(delivery.delivery_id)
        if row is None:
            continue
        taken = used[(row.message_id, row.recipient)]
        channel = next_channel(
            row.channel, recipient_kind(row.recipient), fallbacks[row.message_id], taken, reaches
        )
        if channel is None:
            continue
        taken.add(channel)
        new = {
            "id": new_id("dlv"),
            "message_id": row.message_id,
            "app_id": delivery.app_id,
            "recipient": row.recipient,
            "user_id": row.user_id,
            "address": row.address,
            "channel": channel,
            "status": "queued",
            "attempts": 0,
            "fallback_of": row.id,
            "created_at": now,
            "updated_at": now,
        }
        if connection.execute(_INSERT[connection.dialect.name], new).first() is None:
            continue
        payload = {
            "delivery_id": new["id"],
            "message_id": row.message_id,
            "app_id": delivery.app_id,
            "channel": channel,
            "priority": delivery.priority,
        }
        connection.execute(
            _OUTBOX,
            {
                "message_id": row.message_id,
                "routing_key": channel_key(channel, delivery.priority),
                "payload": payload,
                "available_at": now,
                "created_at": now,
            },
        )
        events.append(
            event_row(
                row.message_id,
                "fallback",
                row.id,
                **{"from": row.channel, "to": channel, "delivery": new["id"]},
            )
        )
    return events
