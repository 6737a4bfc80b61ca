"""The channel worker runtime: claims deliveries, calls the channel, records and retries.

Every channel runs the same loop; the channel module only implements `send`. For a batch, the
worker claims the deliveries in the store (status `sending`, one guarded UPDATE, so two workers
never send the same delivery at once), resolves what each is sent to (the user's address of the
channel's kind, their devices, the app's endpoint; a delivery with nothing to send to fails for
good without a call), hands them to the channel, then in one transaction records `sent`,
`retrying` or `failed` (as `channels.attempt_outcome` decides) with their trace events (each
naming its attempt; the short-lived `sending` claim itself is not traced), hands each recipient
that failed for good to the message's next fallback channel (`channels.fallback`), and settles
the message when all its deliveries are final. A transient failure goes to the retry tier for
its attempt (a jitter slot of it chosen at random, see shared/amqp/topology.py, so a burst of
failures does not come back all at once) and comes back under its own routing key; one that has
used every tier, or a permanent one, is `failed`, its AMQP message is parked in the dead queue,
and a `DeadLetter` row written in the same transaction as the `failed` record lets an operator
list and replay it (shared/dead_letters.py). A deferred one (every provider account slowed down
or busy) waits in the tier that covers its `retry_after` without using up an attempt. Devices
the provider reports gone are removed from their user, traced. Sources are acked after all that
is durable.

The dispatcher runs the same steps in its own process for the web deliveries it writes
(`send_now`), as if each had come from the queue, except the claim: it writes them already
taken (`sending`, first attempt). Only their follow-ups are published.

A delivery is sent at most once while its claim is known: a redelivered AMQP message finds it
`sending` (held) or final (done). The one window for a second send is a worker killed between
the provider's answer and the commit of its record: after `CLAIM_SECONDS` another worker takes
the stale claim and sends it again.

Each batch's size, how long the channel took to send it and how its deliveries ended are counted
once recorded (`shared.pipeline_metrics.WorkerMetrics`), beside the `worker.batch` log line.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import redis
import structlog
from sqlalchemy import (
    Connection,
    String,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from channels.accounts import AccountGate
from channels.attempt_outcome import attempt_outcome
from channels.base import (
    Channel,
    ChannelContext,
    DeviceTarget,
    EndpointTarget,
    OutboundDelivery,
    Outcome,
    Result,
)
from channels.fallback import fall_back
from channels.registry import reach_table
from dispatcher.decisions import DeliveryDecider
from dispatcher.stages.pipeline import PolicyPipeline, standard_stages
from shared.amqp.consumer import BatchConsumer
from shared.amqp.link import AmqpLink, Inbound, Outgoing
from shared.amqp.topology import JITTER_SLOTS, channel_key, retry_slot
from shared.best_effort_redis import BestEffortRedis
from shared.ids import new_id, utcnow
from shared.models import (
    DeadLetter,
    Delivery,
    Device,
    Endpoint,
    Message,
    User,
    UTCDateTime,
    table_of,
)
from shared.outbound import OutboundPolicy
from shared.outbox import enqueue_callbacks
from shared.payloads import DeliveryPayload, decode, encode
from shared.pipeline_metrics import WorkerMetrics
from shared.policy import REDIS_STAGES
from shared.readiness import wait_for_redis
from shared.runtime import Runtime
from shared.settings import Settings
from shared.statuses import DELIVERY_FINAL, DELIVERY_WAITING, message_outcome, standing
from shared.trace import event_row, record_events

log = structlog.get_logger(__name__)

CONFIRM_TIMEOUT_SECONDS = 30.0
#: How long a claim holds before another worker may assume its holder died mid-send.
CLAIM_SECONDS = 10.0


def channel_context(runtime: Runtime, channel: str) -> ChannelContext:
    """What an adapter of `channel` is built with in a process of `runtime`."""
    return build_channel_context(
        runtime.settings, runtime.redis, runtime.best_effort_redis, channel
    )


def build_channel_context(
    settings: Settings, client: redis.Redis, best_effort: BestEffortRedis, channel: str
) -> ChannelContext:
    """The context of an adapter of `channel` on these settings and Redis clients."""
    return ChannelContext(
        settings=settings,
        redis=client,
        accounts=AccountGate(best_effort, settings.queue_prefix, channel, settings.config.breaker),
        outbound=OutboundPolicy(allow=settings.outbound_allow),
    )


# The worker's statements, built once: on its hot path, building SQL costs more than running it.
_D = table_of(Delivery)
_M = table_of(Message)
_U = table_of(User)
_V = table_of(Device)
_E = table_of(Endpoint)
_DEAD = insert(table_of(DeadLetter))
_CLAIM = (
    update(_D)
    .where(
        _D.c.id.in_(bindparam("ids", expanding=True)),
        or_(
            _D.c.status.in_(DELIVERY_WAITING),
            # Held for quiet hours: its outbox row is published once it may be sent.
            and_(_D.c.status == "deferred", _D.c.release_at <= bindparam("now")),
            and_(_D.c.status == "sending", _D.c.updated_at < bindparam("stale")),
        ),
    )
    .values(status="sending", attempts=_D.c.attempts + 1, updated_at=bindparam("now"))
    .returning(
        _D.c.id,
        _D.c.message_id,
        _D.c.app_id,
        _D.c.channel,
        _D.c.user_id,
        _D.c.address,
        _D.c.created_at,
        _D.c.attempts,
    )
)
_CONTENT_COLUMNS = (_M.c.content, _M.c.category, _M.c.priority, _M.c.expires_at)
_CONTENT = select(_M.c.id, *_CONTENT_COLUMNS).where(_M.c.id.in_(bindparam("ids", expanding=True)))
# On PostgreSQL the claim returns its messages' content too: one statement instead of two.
_CLAIMED = _CLAIM.cte("claimed")
_CLAIM_WITH_CONTENT = select(_CLAIMED, *_CONTENT_COLUMNS).join_from(
    _CLAIMED, _M, _M.c.id == _CLAIMED.c.message_id
)
# Deliveries written already taken by the process that sends them (`send_now`): read with
# their content, not claimed.
_TAKEN_WITH_CONTENT = (
    select(*_CLAIM.exported_columns, *_CONTENT_COLUMNS)
    .join_from(_D, _M, _M.c.id == _D.c.message_id)
    .where(_D.c.id.in_(bindparam("ids", expanding=True)), _D.c.status == "sending")
)
_FORGET_DEVICES = delete(_V).where(_V.c.id.in_(bindparam("ids", expanding=True)))
_BUSY = select(_D.c.id).where(
    _D.c.id.in_(bindparam("ids", expanding=True)), _D.c.status == "sending"
)
# Only deliveries still in our claim change: a browser may have acked one already.
_STILL_CLAIMED = and_(_D.c.id.in_(bindparam("ids", expanding=True)), _D.c.status == "sending")
_MARK_SENT = (
    update(_D)
    .where(_STILL_CLAIMED)
    .values(status="sent", last_error=None, sent_at=bindparam("now"), updated_at=bindparam("now"))
)
# A sent delivery with a receipt (a web one's feed position) is marked sent and given its
# receipt in one row update: the receipt whatever the status, the rest only in our claim.
_STILL_SENDING = _D.c.status == "sending"
_NOW = bindparam("now", type_=UTCDateTime())
_SENT_IF_STILL_SENDING = {
    "status": case((_STILL_SENDING, "sent"), else_=_D.c.status),
    "last_error": case((_STILL_SENDING, None), else_=_D.c.last_error),
    "sent_at": case((_STILL_SENDING, _NOW), else_=_D.c.sent_at),
    "updated_at": case((_STILL_SENDING, _NOW), else_=_D.c.updated_at),
}
_MARK_SENT_WITH_RECEIPT = (
    update(_D)
    .where(_D.c.id == bindparam("delivery"))
    .values(receipt=bindparam("receipt"), **_SENT_IF_STILL_SENDING)
)
# On PostgreSQL a whole batch's receipts go in one statement (two arrays, unnested side by side)
# instead of one UPDATE per delivery, each parsed and planned on its own.
_RECEIPTS = (
    func.unnest(
        bindparam("deliveries", type_=ARRAY(String)), bindparam("receipts", type_=ARRAY(String))
    )
    .table_valued("delivery", "receipt")
    .render_derived(name="given")
)
_MARK_SENT_WITH_RECEIPTS = (
    update(_D)
    .where(_D.c.id == _RECEIPTS.c.delivery)
    .values(receipt=_RECEIPTS.c.receipt, **_SENT_IF_STILL_SENDING)
)
_MARK_UNSENT = (
    update(_D)
    .where(_STILL_CLAIMED)
    .values(status=bindparam("status"), last_error=bindparam("error"), updated_at=bindparam("now"))
)
# A deferred delivery gives back the attempt its claim counted.
_MARK_DEFERRED = (
    update(_D)
    .where(_STILL_CLAIMED)
    .values(
        status="retrying",
        attempts=_D.c.attempts - 1,
        last_error=bindparam("error"),
        updated_at=bindparam("now"),
    )
)
# Taken before a message's deliveries are read to settle it: the dispatcher's last step of a
# large message holds the row while it marks the message dispatched, so the two take turns and
# each reads what the other committed (`dispatcher.expansion`). In id order, so that workers
# settling overlapping batches never wait on each other in a circle.
_LOCK_MESSAGES = (
    select(_M.c.id)
    .where(_M.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_M.c.id)
    .with_for_update()
)
# The deliveries of those messages that could settle now: dispatched, with every delivery
# final. So a large message's deliveries are read once, when it settles, instead of all of them
# after each batch of its deliveries (a topic's 10,000 read 100 times).
_SETTLEABLE = select(_M.c.id).where(
    _M.c.id.in_(bindparam("ids", expanding=True)),
    _M.c.status == "dispatched",
    ~exists().where(_D.c.message_id == _M.c.id, _D.c.status.not_in(sorted(DELIVERY_FINAL))),
)
_STATUSES = select(_D.c.message_id, _D.c.id, _D.c.status, _D.c.fallback_of).where(
    _D.c.message_id.in_(_SETTLEABLE.scalar_subquery())
)
_SETTLE = (
    update(_M)
    .where(_M.c.id.in_(bindparam("ids", expanding=True)), _M.c.status == "dispatched")
    .values(status=bindparam("outcome"), updated_at=bindparam("now"))
    .returning(_M.c.id)
)


@dataclass(frozen=True)
class Attempt:
    """One claimed delivery, the AMQP message it came in, and how the channel's send went."""

    source: Inbound
    delivery: OutboundDelivery
    result: Result


class ChannelWorker(BatchConsumer):
    """Consumes the lanes of `channel.<name>` (high, normal, low) for one channel; see the
    module docstring."""

    batch_size = 100

    def __init__(
        self,
        runtime: Runtime,
        link: AmqpLink,
        channel: Channel,
        claim_seconds: float = CLAIM_SECONDS,
        reaches: Mapping[str, frozenset[str]] | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        super().__init__(link)
        self.runtime = runtime
        self.channel = channel
        self.claim_seconds = claim_seconds
        #: What each channel reaches, for choosing a fallback channel (`reach_table`).
        self.reaches = reach_table() if reaches is None else reaches
        # A fallback delivery is decided by the dispatcher's stages too. Their Redis checks
        # let it through while Redis is away: this runs after the send it falls back from,
        # and holding the batch then would send that one again once its claim lapsed.
        self._fallbacks = DeliveryDecider(
            PolicyPipeline(
                standard_stages(runtime.redis, runtime.settings.queue_prefix, REDIS_STAGES),
                self.reaches,
            ),
            runtime.settings.config.policy,
        )
        self.delays = tuple(runtime.topology.retry_delays)
        self._schema = DeliveryPayload()
        #: Picks the jitter slot of each transient failure's retry.
        self._jitter = random.Random()
        self._log = log.bind(channel=channel.name)
        self.metrics = metrics or WorkerMetrics(channel.name)

    def run(self) -> None:
        """Wait for Redis (channels keep their guards there), then consume until stopped."""
        if wait_for_redis(self.runtime.redis, self._stopping, connections=self.runtime.connections):
            super().run()

    def handle_batch(self, batch: list[Inbound]) -> None:
        by_id: dict[str, Inbound] = {}
        malformed: list[tuple[Inbound, str]] = []
        twice: list[Inbound] = []
        for message in batch:
            try:
                payload = decode(self._schema, message.body)
            except ValueError as error:
                malformed.append((message, str(error)))
                continue
            if payload["delivery_id"] in by_id:
                twice.append(message)  # the same delivery twice in one batch
                continue
            by_id[payload["delivery_id"]] = message
        if by_id:
            self._settle(by_id, self._work(by_id, len(batch)))
        # Settled only once the others are done: a batch that fails because the store or Redis
        # is away is handled again whole, and settling a message twice makes the broker close
        # the channel (unknown delivery tag), which takes the others' acks with it.
        for message in twice:
            self.link.ack(message)
        for message, detail in malformed:
            self._log.error("worker.malformed", detail=detail)
            self.link.nack(message, requeue=False)

    def send_now(self, payloads: Sequence[dict[str, str]]) -> dict[str, Outgoing]:
        """Send and record deliveries handed over in this process rather than through the
        queue (`dispatcher.dispatch` sends web deliveries so), which the caller wrote as a claim
        leaves them (`sending`, their first attempt), as if each had come as the AMQP message
        of its payload: delivery id -> its follow-up publish (a retry or a dead letter), which
        the caller is to publish before it lets go of the work."""
        by_payload = {payload["delivery_id"]: payload for payload in payloads}
        # Bodies are made for the follow-ups only, the few that are published.
        by_id = {
            delivery_id: Inbound(
                body=b"",
                routing_key=channel_key(payload["channel"], payload["priority"]),
                headers={},
                delivery_tag=0,
                redelivered=False,
                generation=-1,
            )
            for delivery_id, payload in by_payload.items()
        }
        sources = {id(source): delivery_id for delivery_id, source in by_id.items()}
        follow_ups = {}
        for source, out in self._work(by_id, len(by_id), taken=True):
            delivery_id = sources[id(source)]
            body = encode(self._schema, by_payload[delivery_id])
            follow_ups[delivery_id] = replace(out, body=body)
        return follow_ups

    def _work(
        self, by_id: dict[str, Inbound], size: int, *, taken: bool = False
    ) -> list[tuple[Inbound, Outgoing]]:
        """Claim (or, `taken`, read), send and record the deliveries of `by_id` (delivery id
        -> its AMQP message), of a batch of `size` AMQP messages; the follow-up publishes of
        their sources."""
        started = time.monotonic()
        with self.runtime.engine.begin() as connection:
            claimed, expired = self._claim(connection, list(by_id), taken=taken)
            unclaimed = [] if taken else [i for i in by_id if i not in claimed]
            busy = self._busy(connection, unclaimed)
            claimed = self._resolve(connection, claimed)
        claimed_at = time.monotonic()
        unreachable = {
            d.delivery_id: reason
            for d in claimed.values()
            if d.delivery_id not in expired and (reason := self._unreachable(d)) is not None
        }
        deliveries = [
            d for d in claimed.values() if d.delivery_id not in expired | unreachable.keys()
        ]
        attempts = [
            Attempt(by_id[d.delivery_id], d, result)
            for d, result in zip(deliveries, self._send(deliveries), strict=True)
        ]
        attempts += [
            Attempt(by_id[i], claimed[i], Result.permanent(reason))
            for i, reason in unreachable.items()
        ]
        sent_at = time.monotonic()
        with self.runtime.engine.begin() as connection:
            follow_ups, outcomes = self._record(connection, attempts, [claimed[i] for i in expired])
        recorded_at = time.monotonic()
        self.metrics.observe_batch(size, outcomes, sent_at - claimed_at)
        self._log.info(
            "worker.batch",
            size=size,
            sent=sum(a.result.outcome is Outcome.SENT for a in attempts),
            failed=sum(a.result.outcome is not Outcome.SENT for a in attempts),
            busy=len(busy),
            expired=len(expired),
            claim_ms=round((claimed_at - started) * 1000, 1),
            send_ms=round((sent_at - claimed_at) * 1000, 1),
            record_ms=round((recorded_at - sent_at) * 1000, 1),
        )
        for delivery_id in busy:
            source = by_id[delivery_id]
            follow_ups.append((source, self._retry_message(source, self.delays[0].label)))
        return follow_ups

    def _claim(
        self, connection: Connection, ids: list[str], *, taken: bool
    ) -> tuple[dict[str, OutboundDelivery], set[str]]:
        """The deliveries this worker now holds (claimed now, or `taken` already), and those
        of them whose message expired."""
        now = utcnow()
        stale = now - timedelta(seconds=self.claim_seconds)
        params = {"ids": ids, "now": now, "stale": stale}
        if taken:
            rows = connection.execute(_TAKEN_WITH_CONTENT, params).all()
            contents = {row.message_id: tuple(row[-len(_CONTENT_COLUMNS) :]) for row in rows}
        elif connection.dialect.name == "postgresql":
            rows = connection.execute(_CLAIM_WITH_CONTENT, params).all()
            contents = {row.message_id: tuple(row[-len(_CONTENT_COLUMNS) :]) for row in rows}
        else:
            rows = connection.execute(_CLAIM, params).all()
            wanted = list({row.message_id for row in rows})
            contents = (
                {m: tuple(c) for m, *c in connection.execute(_CONTENT, {"ids": wanted})}
                if wanted
                else {}
            )
        if not rows:
            return {}, set()
        claimed = {}
        expired = set()
        for row in sorted(rows, key=lambda r: r.id):
            content, category, priority, expires_at = contents[row.message_id]
            if expires_at is not None and expires_at <= now:
                expired.add(row.id)
            claimed[row.id] = OutboundDelivery(
                delivery_id=row.id,
                message_id=row.message_id,
                app_id=row.app_id,
                channel=row.channel,
                user_id=row.user_id,
                address=row.address,
                category=category,
                content=content,
                created_at=row.created_at,
                attempt=row.attempts,
                priority=priority,
            )
        return claimed, expired

    def _resolve(
        self, connection: Connection, claimed: dict[str, OutboundDelivery]
    ) -> dict[str, OutboundDelivery]:
        """The claimed deliveries with what each is sent to (see the module docstring)."""
        kind = self.channel.address_kind
        users = {(d.app_id, d.user_id) for d in claimed.values() if d.user_id is not None}
        resolved = dict(claimed)
        if users and kind in ("email", "phone"):
            column = _U.c[kind]
            found = {
                (app_id, user_id): address
                for app_id, user_id, address in connection.execute(
                    select(_U.c.app_id, _U.c.user_id, column).where(
                        tuple_(_U.c.app_id, _U.c.user_id).in_(list(users))
                    )
                )
            }
            for key, d in claimed.items():
                if d.address is None and d.user_id is not None:
                    resolved[key] = replace(d, address=found.get((d.app_id, d.user_id)))
        if users and self.channel.needs_devices:
            devices: dict[tuple[str, str], list[DeviceTarget]] = defaultdict(list)
            for row in connection.execute(
                select(
                    _V.c.id, _V.c.app_id, _V.c.user_id, _V.c.platform, _V.c.token, _V.c.subscription
                )
                .where(tuple_(_V.c.app_id, _V.c.user_id).in_(list(users)))
                .order_by(_V.c.id)
            ):
                target = DeviceTarget(row.id, row.platform, row.token, row.subscription)
                devices[(row.app_id, row.user_id)].append(target)
            for key, d in resolved.items():
                if d.user_id is not None:
                    resolved[key] = replace(d, devices=tuple(devices[(d.app_id, d.user_id)]))
        if kind == "endpoint":
            names = {(d.app_id, d.address) for d in claimed.values() if d.address is not None}
            endpoints = (
                {
                    (row.app_id, row.name): EndpointTarget(row.name, row.kind, row.url, row.secret)
                    for row in connection.execute(
                        select(_E.c.app_id, _E.c.name, _E.c.kind, _E.c.url, _E.c.secret).where(
                            tuple_(_E.c.app_id, _E.c.name).in_(list(names))
                        )
                    )
                }
                if names
                else {}
            )
            for key, d in resolved.items():
                resolved[key] = replace(d, endpoint=endpoints.get((d.app_id, d.address or "")))
        return resolved

    def _unreachable(self, delivery: OutboundDelivery) -> str | None:
        """Why `delivery` has nothing this channel can send to (None when it has)."""
        kind = self.channel.address_kind
        if kind == "endpoint":
            if delivery.endpoint is None:
                return f"the app has no endpoint {delivery.address!r}"
            return None
        if kind is not None and delivery.address is None:
            return f"the user has no {kind} address"
        if self.channel.needs_devices and not delivery.devices:
            return "the user has no devices"
        return None

    def _busy(self, connection: Connection, ids: list[str]) -> list[str]:
        """Of the unclaimed ids, those another worker holds right now (the rest are done)."""
        if not ids:
            return []
        return list(connection.scalars(_BUSY, {"ids": ids}))

    def _send(self, deliveries: list[OutboundDelivery]) -> list[Result]:
        if not deliveries:
            return []
        try:
            results = self.channel.send_many(deliveries)
        except Exception as error:  # the contract says never, but a bug must not lose the batch
            self._log.exception("worker.channel_raised", count=len(deliveries))
            return [Result.transient(f"{type(error).__name__}: {error}")] * len(deliveries)
        if len(results) != len(deliveries):
            detail = f"channel answered {len(results)} results for {len(deliveries)} deliveries"
            return [Result.transient(detail)] * len(deliveries)
        return results

    def _record(
        self, connection: Connection, attempts: list[Attempt], expired: list[OutboundDelivery]
    ) -> tuple[list[tuple[Inbound, Outgoing]], Counter[str]]:
        """Record every attempt and expiry; the follow-up publishes, and how many deliveries
        ended with each status."""
        now = utcnow()
        # Deliveries that end the same way share one UPDATE: (status, last_error) -> ids.
        groups: dict[tuple[str, str | None], list[str]] = defaultdict(list)
        events: list[dict[str, Any]] = []
        follow_ups: list[tuple[Inbound, Outgoing]] = []
        gone: list[int] = []
        dead: list[dict[str, Any]] = []
        receipts: dict[str, str] = {}
        failed: list[OutboundDelivery] = []
        # Past their message's expires_at: not sent, and final (nothing to retry or park).
        for delivery in expired:
            groups[("expired", None)].append(delivery.delivery_id)
            events.append(event_row(delivery.message_id, "expired", delivery.delivery_id))
        for attempt in attempts:
            delivery, result = attempt.delivery, attempt.result
            for device_id in result.gone_devices:
                gone.append(device_id)
                platform = next(
                    (d.platform for d in delivery.devices if d.id == device_id), "unknown"
                )
                events.append(
                    event_row(
                        delivery.message_id,
                        "device_removed",
                        delivery.delivery_id,
                        device=device_id,
                        platform=platform,
                    )
                )
            decided = attempt_outcome(delivery.attempt, result, self.delays)
            status, error = decided.status, decided.error
            if decided.tier is not None:
                # A deferred delivery was not attempted: it waits without using up an attempt.
                deferred = status == "deferred"
                events.append(
                    event_row(
                        delivery.message_id,
                        "retrying",
                        delivery.delivery_id,
                        attempt=delivery.attempt,
                        error=error,
                        retry_in=decided.tier,
                        **({"deferred": True} if deferred else {}),
                        **({"account": result.account} if result.account else {}),
                    )
                )
                header = decided.tier if deferred else self._jittered(decided.tier)
                follow_ups.append((attempt.source, self._retry_message(attempt.source, header)))
            elif status == "sent":
                if result.receipt is not None:
                    receipts[delivery.delivery_id] = result.receipt
                events.append(
                    event_row(
                        delivery.message_id,
                        "sent",
                        delivery.delivery_id,
                        attempt=delivery.attempt,
                        **({"note": result.detail} if result.detail else {}),
                    )
                )
            else:
                events.append(
                    event_row(
                        delivery.message_id,
                        "failed",
                        delivery.delivery_id,
                        attempt=delivery.attempt,
                        error=error,
                        permanent=result.outcome is Outcome.PERMANENT,
                    )
                )
                follow_ups.append((attempt.source, self._dead_message(attempt.source, result)))
                dead.append(
                    {
                        "id": new_id("dead"),
                        "delivery_id": delivery.delivery_id,
                        "message_id": delivery.message_id,
                        "app_id": delivery.app_id,
                        "channel": delivery.channel,
                        "attempts": delivery.attempt,
                        "error": error,
                        "created_at": now,
                    }
                )
                failed.append(delivery)
            groups[(status, error)].append(delivery.delivery_id)
            if status not in ("sent", "deferred"):
                self._log.warning(
                    "worker.attempt_failed",
                    delivery_id=delivery.delivery_id,
                    message_id=delivery.message_id,
                    app=delivery.app_id,
                    stage=status,
                    attempt=delivery.attempt,
                    error=error,
                )
        for (status, error), ids in groups.items():
            if status == "sent":
                if plain := [i for i in ids if i not in receipts]:
                    connection.execute(_MARK_SENT, {"ids": plain, "now": now})
                if receipts:
                    self._mark_sent_with_receipts(connection, receipts, now)
            elif status == "deferred":
                connection.execute(_MARK_DEFERRED, {"ids": ids, "now": now, "error": error})
            else:
                params = {"ids": ids, "now": now, "status": status, "error": error}
                connection.execute(_MARK_UNSENT, params)
        if gone:
            connection.execute(_FORGET_DEVICES, {"ids": gone})
        if dead:
            connection.execute(_DEAD, dead)
        # Before settling: a message with a fallback delivery pending is not final.
        events += fall_back(connection, failed, self._fallbacks, now)
        settling = {a.delivery.message_id for a in attempts} | {d.message_id for d in expired}
        events += self._settle_messages(connection, settling)
        record_events(connection, events)
        ended: Counter[str] = Counter()
        for (status, _error), ids in groups.items():
            ended[status] += len(ids)
        return follow_ups, ended

    @staticmethod
    def _mark_sent_with_receipts(
        connection: Connection, receipts: dict[str, str], now: datetime
    ) -> None:
        if connection.dialect.name == "postgresql":
            params = {"deliveries": list(receipts), "receipts": list(receipts.values()), "now": now}
            connection.execute(_MARK_SENT_WITH_RECEIPTS, params)
        else:
            rows = [{"delivery": i, "receipt": r, "now": now} for i, r in receipts.items()]
            connection.execute(_MARK_SENT_WITH_RECEIPT, rows)

    def _jittered(self, tier: str) -> str:
        """The header of a random jitter slot of `tier`. Only transient failures are spread:
        a deferred delivery's tier already starts at the provider's `Retry-After`, which a
        shorter slot would undercut."""
        return retry_slot(tier, self._jitter.randrange(JITTER_SLOTS))

    def _settle_messages(
        self, connection: Connection, message_ids: set[str]
    ) -> list[dict[str, Any]]:
        """Mark messages whose deliveries are all final as completed / failed, each with its
        status callback (`shared.outbox`)."""
        if not message_ids:
            return []
        if connection.dialect.name == "postgresql":
            connection.execute(_LOCK_MESSAGES, {"ids": list(message_ids)})
        rows: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
        found = connection.execute(_STATUSES, {"ids": list(message_ids)})
        for message_id, delivery_id, status, fallback_of in found:
            rows[message_id].append((delivery_id, status, fallback_of))
        by_outcome: dict[str, list[str]] = defaultdict(list)
        for message_id, deliveries in rows.items():
            outcome = message_outcome(standing(deliveries))
            if outcome is not None:
                by_outcome[outcome].append(message_id)
        events = []
        now = utcnow()
        for outcome, ids in by_outcome.items():
            params = {"ids": ids, "outcome": outcome, "now": now}
            settled = connection.scalars(_SETTLE, params).all()
            events += [event_row(message_id, outcome) for message_id in settled]
            enqueue_callbacks(connection, settled, now)
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
