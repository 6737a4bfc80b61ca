"""The policy stages applied to a message's delivery targets, as rows to write.

`DeliveryDecider` reads what the stages need for a batch (the apps' policies, the user
recipients' addresses, devices, preferences and quiet hours), runs the stages
(`dispatcher.stages`), and turns their decisions into delivery rows (each with its status and,
for those that are not sent, the reason), one trace event per delivery a stage stopped or
deferred (naming the stage), and an outbox row per deferred delivery, due when it may be sent.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, exists, select

from dispatcher.stages.base import Candidate, MessageFacts, RecipientFacts
from dispatcher.stages.pipeline import Decision, PolicyPipeline
from dispatcher.targets import Target
from shared.delivery_outbox import delivery_row, write_rows
from shared.ids import new_id
from shared.models import Device, User, table_of
from shared.policy import Policy, app_policies
from shared.statuses import message_outcome, standing
from shared.trace import event_row

_U = table_of(User)
_V = table_of(Device)
_HAS_DEVICES = exists().where(_V.c.app_id == _U.c.app_id, _V.c.user_id == _U.c.user_id)


def message_facts(row: Any) -> MessageFacts:
    """The facts of a message row read with the columns the stages need."""
    return MessageFacts(
        id=row.id,
        app_id=row.app_id,
        category=row.category,
        priority=row.priority,
        content=row.content,
        dedup_key=row.dedup_key,
        fallback=row.fallback,
    )


_FACTS = select(
    _U.c.user_id,
    _U.c.email.is_not(None),
    _U.c.phone.is_not(None),
    _HAS_DEVICES,
    _U.c.timezone,
    _U.c.preferences,
    _U.c.quiet_hours,
).where(_U.c.app_id == bindparam("app"), _U.c.user_id.in_(bindparam("users", expanding=True)))


def recipient_facts(
    connection: Connection, users: set[tuple[str, str]]
) -> dict[tuple[str, str], RecipientFacts]:
    """(app_id, user_id) -> what the stages read of that user, for those registered."""
    by_app: dict[str, list[str]] = defaultdict(list)
    for app_id, user_id in users:
        by_app[app_id].append(user_id)
    facts = {}
    # One statement per app: PostgreSQL plans `app_id = ? AND user_id IN (...)` in well under a
    # millisecond, where a tuple IN of a page of users took it longer to plan than to run.
    for app_id, user_ids in by_app.items():
        for (
            user_id,
            email,
            phone,
            devices,
            timezone,
            preferences,
            quiet_hours,
        ) in connection.execute(_FACTS, {"app": app_id, "users": user_ids}):
            facts[(app_id, user_id)] = RecipientFacts(
                email=bool(email),
                phone=bool(phone),
                devices=bool(devices),
                timezone=timezone,
                preferences=preferences or {},
                quiet_hours=quiet_hours,
            )
    return facts


@dataclass
class Decided:
    """What a batch's decisions write, and the counts the dispatcher logs per message."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: delivery id -> its outbox row, for the deferred deliveries (written if the row is new).
    deferred: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: message id -> (channel, status) -> deliveries.
    counts: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Work:
    """One message's targets to decide, and the endpoints its app has (name -> channel); for a
    fallback delivery, the (id, channel) of the delivery it takes over from."""

    message: MessageFacts
    targets: Sequence[Target]
    endpoints: Mapping[str, str] = field(default_factory=dict)
    fallback_of: tuple[str, str] | None = None


class DeliveryDecider:
    """See the module docstring."""

    def __init__(self, pipeline: PolicyPipeline, defaults: Policy) -> None:
        self.pipeline = pipeline
        self.defaults = defaults

    @property
    def reaches(self) -> Mapping[str, frozenset[str]]:
        """Channel -> the kinds of recipient it delivers to (`channels.registry.reach_table`)."""
        return self.pipeline.reaches

    def decide(
        self,
        connection: Connection,
        batch: Sequence[Work],
        now: datetime,
        used: Mapping[tuple[str, str], set[str]] | None = None,
    ) -> Decided:
        """Decide every target of `batch`; `used` names the channels each (message id,
        recipient) already has deliveries on, beyond those in `batch`."""
        policies = app_policies(connection, self.defaults, {w.message.app_id for w in batch})
        facts = recipient_facts(
            connection,
            {
                (w.message.app_id, t.user_id)
                for w in batch
                for t in w.targets
                if t.user_id is not None
            },
        )
        candidates = [
            Candidate(
                delivery_id=new_id("dlv"),
                target=target,
                message=work.message,
                policy=policies[work.message.app_id],
                recipient=(
                    facts.get((work.message.app_id, target.user_id))
                    if target.user_id is not None
                    else None
                ),
                endpoint_known=target.address in work.endpoints,
                fallback_of=work.fallback_of[0] if work.fallback_of else None,
                fallback_from=work.fallback_of[1] if work.fallback_of else None,
            )
            for work in batch
            for target in work.targets
        ]
        decided = Decided(counts={w.message.id: Counter() for w in batch})
        for decision in self.pipeline.run(candidates, now, used):
            self._write(decided, decision, now)
        return decided

    def _write(self, decided: Decided, decision: Decision, now: datetime) -> None:
        candidate = decision.candidate
        message = candidate.message
        target = candidate.target
        status = decision.status
        reason = decision.verdict.reason if decision.verdict is not None else None
        release_at = (
            decision.deferral.release_at if status == "deferred" and decision.deferral else None
        )
        decided.rows.append(
            {
                "id": candidate.delivery_id,
                "message_id": message.id,
                "app_id": message.app_id,
                "recipient": target.recipient,
                "user_id": target.user_id,
                "address": target.address,
                "channel": target.channel,
                "status": status,
                "attempts": 0,
                "last_error": reason,
                "fallback_of": candidate.fallback_of,
                "release_at": release_at,
                "created_at": now,
                "updated_at": now,
            }
        )
        decided.counts[message.id][(target.channel, status)] += 1
        if decision.verdict is not None and decision.stage is not None:
            decided.events.append(
                event_row(
                    message.id,
                    decision.stage,
                    candidate.delivery_id,
                    status=status,
                    reason=decision.verdict.reason,
                )
            )
        if decision.deferral is not None and decision.verdict is None:
            decided.events.append(
                event_row(
                    message.id,
                    "quiet_hours",
                    candidate.delivery_id,
                    status="deferred",
                    reason=decision.deferral.reason,
                    until=release_at.isoformat() if release_at else None,
                )
            )
            decided.deferred[candidate.delivery_id] = delivery_row(
                delivery_id=candidate.delivery_id,
                message_id=message.id,
                app_id=message.app_id,
                channel=target.channel,
                priority=message.priority,
                available_at=release_at,
                now=now,
            )
        if candidate.fallback_of is not None:
            decided.events.append(
                event_row(
                    message.id,
                    "fallback",
                    candidate.fallback_of,
                    **{
                        "from": candidate.fallback_from,
                        "to": target.channel,
                        "delivery": candidate.delivery_id,
                    },
                )
            )


def settled_at_dispatch(
    rows: Sequence[Mapping[str, Any]], message_ids: Sequence[str]
) -> list[tuple[str, str]]:
    """(final status, message id) of each of `message_ids` whose delivery rows (of `rows`) the
    stages all ended, or that has none: nothing is left for a channel worker to settle."""
    by_message: dict[str, list[tuple[str, str, str | None]]] = {mid: [] for mid in message_ids}
    for row in rows:
        if row["message_id"] in by_message:
            by_message[row["message_id"]].append((row["id"], row["status"], row["fallback_of"]))
    settled = []
    for message_id, deliveries in by_message.items():
        if not deliveries:
            settled.append(("completed", message_id))
            continue
        outcome = message_outcome(standing(deliveries))
        if outcome is not None:
            settled.append((outcome, message_id))
    return settled


def write_deferred(connection: Connection, decided: Decided, inserted: set[str]) -> None:
    """The outbox rows of the deferred deliveries among `inserted` (new rows)."""
    write_rows(
        connection,
        [row for delivery_id, row in decided.deferred.items() if delivery_id in inserted],
    )
