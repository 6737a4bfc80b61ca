"""Fallback: a recipient that one channel cannot reach is tried on the next channel of the list.

A message may carry `"fallback": ["push", "sms"]`. When a delivery to a recipient fails for good
(a permanent failure, a transient one out of retries, or no address on the channel), the first
channel of that list that the message has not used for that recipient yet, and that reaches
that kind of recipient (`dispatcher.fallback_choice`), takes over: a new delivery on that
channel for the same recipient (its `fallback_of` names the failed one), decided by the same
policy stages as the dispatcher's deliveries (`dispatcher.decisions`: an opted-out recipient is
`suppressed`, one in quiet hours `deferred`, and so on), with a `fallback` trace event naming
both channels, all in the transaction that records the failure; one to be sent gets an outbox
row that the relay publishes to the channel's queue. The message cannot settle while that
delivery is pending, and once it is final, the failed delivery it replaced no longer counts
towards the message's outcome: a recipient reached by SMS after push failed makes the message
`completed`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select

from channels.base import OutboundDelivery
from dispatcher.decisions import DeliveryDecider, Work, message_facts, write_deferred
from dispatcher.expansion import MESSAGE_COLUMNS, insert_deliveries
from dispatcher.fallback_choice import next_channel, recipient_kind
from dispatcher.targets import Target
from shared.delivery_outbox import delivery_row, write_rows
from shared.models import Delivery, Message, table_of

_D = table_of(Delivery)
_M = table_of(Message)
_FALLBACKS = select(*MESSAGE_COLUMNS).where(
    _M.c.id.in_(bindparam("ids", expanding=True)), _M.c.fallback.is_not(None)
)
_TARGETS = select(
    _D.c.id, _D.c.message_id, _D.c.recipient, _D.c.user_id, _D.c.address, _D.c.channel
).where(_D.c.message_id.in_(bindparam("ids", expanding=True)))


def fall_back(
    connection: Connection,
    failed: Sequence[OutboundDelivery],
    decider: DeliveryDecider,
    now: datetime,
) -> list[dict[str, Any]]:
    """Write the fallback deliveries of `failed` (deliveries that failed for good) in the
    caller's transaction; the events to record with them."""
    message_ids = list({d.message_id for d in failed})
    if not message_ids:
        return []
    messages = {row.id: row for row in connection.execute(_FALLBACKS, {"ids": message_ids})}
    if not messages:
        return []
    rows = connection.execute(_TARGETS, {"ids": list(messages)}).all()
    by_id = {row.id: row for row in rows}
    used: dict[tuple[str, str], set[str]] = defaultdict(set)
    for target in rows:
        used[(target.message_id, target.recipient)].add(target.channel)
    work = []
    for delivery in failed:
        row = by_id.get(delivery.delivery_id)
        if row is None:
            continue
        taken = used[(row.message_id, row.recipient)]
        message = messages[row.message_id]
        channel = next_channel(
            row.channel, recipient_kind(row.recipient), message.fallback, taken, decider.reaches
        )
        if channel is None:
            continue
        taken.add(channel)
        work.append(
            Work(
                message_facts(message),
                [Target(row.recipient, row.user_id, row.address, channel)],
                fallback_of=(row.id, row.channel),
            )
        )
    if not work:
        return []
    decided = decider.decide(connection, work, now, used=used)
    new_ids = {written.id for written in insert_deliveries(connection, decided.rows)}
    write_deferred(connection, decided, new_ids)
    priorities = {w.message.id: w.message.priority for w in work}
    write_rows(
        connection,
        [
            delivery_row(
                delivery_id=row["id"],
                message_id=row["message_id"],
                app_id=row["app_id"],
                channel=row["channel"],
                priority=priorities[row["message_id"]],
                available_at=now,
                now=now,
            )
            for row in decided.rows
            if row["id"] in new_ids and row["status"] == "queued"
        ],
    )
    return [
        event
        for event in decided.events
        if event["delivery_id"] in new_ids or event["detail"].get("delivery") in new_ids
    ]
