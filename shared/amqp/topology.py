"""The queue topology of DESIGN.md, declared idempotently by every service at start-up.

One durable topic exchange carries everything. Work queues are quorum queues with a delivery
limit; retries wait in one TTL queue per delay tier and dead-letter back to the exchange under
their original routing key; what cannot be delivered ends in the dead queue.

Retry jitter lives in the topology, not in per-message TTLs. A message's own `expiration`
only takes effect once it reaches the head of its queue (RabbitMQ expires from the head, in
classic and quorum queues alike), so in a burst of failures each message waits for the
longest expiration ahead of it and the burst comes back in lock-step anyway. Instead each tier
has `JITTER_SLOTS` queues whose fixed TTLs step down from the tier's delay to
`1 - JITTER_SPAN` of it; the worker puts each retry into a slot chosen at random. Every queue
keeps one TTL, so nothing waits behind a longer message, and a burst leaves its tier spread
over the last fifth of the delay. Slot 0 is the tier's plain queue (name and header unchanged).

Priority lanes: the dispatch queue and each channel queue come in three lanes, one per message
`priority` (`LANES`), so that a verification code never waits behind a marketing blast. RabbitMQ
3.10's quorum queues have no message priorities, so a lane is a queue of its own; consumers take
from every lane and hand out the higher lanes first (`shared.amqp.link`). The normal lane keeps
the plain names (`dispatch`, `channel.web`), the others add the lane (`dispatch.high`,
`channel.web.low`), and a queue is named by its prefix and routing key. A retry dead-letters
back under its original routing key, so it comes back in its lane; the dead queue is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.config_file import DEFAULT_RETRY_DELAYS, Delay

#: The priority lanes, highest first; a consumer lists its queues in this order.
LANES = ("high", "normal", "low")
#: The lane of a message that names none (and of every message published before lanes).
NORMAL = "normal"
DISPATCH_KEY = "dispatch"
DELIVERY_LIMIT = 20
#: Queues per retry tier, and how much of the tier's delay the shortest of them cuts off.
JITTER_SLOTS = 4
JITTER_SPAN = 0.2


def retry_slot(tier: str, slot: int) -> str:
    """The `tier` header value (and queue name suffix) of one jitter slot of a tier."""
    return tier if slot == 0 else f"{tier}-j{slot}"


def slot_seconds(delay: Delay, slot: int) -> float:
    """How long a message waits in jitter slot `slot` of `delay`'s tier."""
    return delay.seconds * (1 - JITTER_SPAN * slot / (JITTER_SLOTS - 1))


def _in_lane(key: str, lane: str) -> str:
    if lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}: one of {', '.join(LANES)}")
    return key if lane == NORMAL else f"{key}.{lane}"


def dispatch_key(lane: str = NORMAL) -> str:
    """The routing key of the dispatch queue's lane `lane`."""
    return _in_lane(DISPATCH_KEY, lane)


def channel_key(channel: str, lane: str = NORMAL) -> str:
    """The routing key of lane `lane` of one channel's work queue."""
    return _in_lane(f"channel.{channel}", lane)


@dataclass(frozen=True)
class QueueSpec:
    """A queue, its arguments and how it is bound."""

    name: str
    arguments: dict[str, Any]
    exchange: str
    routing_key: str = ""
    binding_arguments: dict[str, Any] | None = None


@dataclass(frozen=True)
class Topology:
    """Names and declarations of every exchange and queue under one prefix."""

    prefix: str = "omnipush"
    channels: Sequence[str] = field(default_factory=lambda: ("web",))
    # `[retry] delays`: one queue per delay; a queue's name says its delay, so a changed
    # list declares new queues instead of clashing with the old ones' arguments.
    retry_delays: Sequence[Delay] = DEFAULT_RETRY_DELAYS

    @property
    def exchange(self) -> str:
        return self.prefix

    @property
    def retry_exchange(self) -> str:
        return f"{self.prefix}.retry"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dispatch_queue(self) -> str:
        """The dispatch queue's normal lane."""
        return self.dispatch_lane(NORMAL)

    def dispatch_lane(self, lane: str) -> str:
        return f"{self.prefix}.{dispatch_key(lane)}"

    def dispatch_queues(self) -> list[str]:
        """The dispatch queue's lanes, highest first: what the dispatcher consumes."""
        return [self.dispatch_lane(lane) for lane in LANES]

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    def channel_queue(self, channel: str, lane: str = NORMAL) -> str:
        return f"{self.prefix}.{channel_key(channel, lane)}"

    def channel_queues(self, channel: str) -> list[str]:
        """One channel's lanes, highest first: what its workers consume."""
        return [self.channel_queue(channel, lane) for lane in LANES]

    def retry_queue(self, tier: str) -> str:
        return f"{self.prefix}.retry.{tier}"

    def work_queue(self, name: str, routing_key: str) -> QueueSpec:
        return QueueSpec(
            name=name,
            exchange=self.exchange,
            routing_key=routing_key,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": DELIVERY_LIMIT,
                # A message over its delivery limit is dead-lettered, never dropped.
                "x-dead-letter-exchange": self.dead_exchange,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )

    def queues(self) -> list[QueueSpec]:
        specs = [self.work_queue(self.dispatch_lane(lane), dispatch_key(lane)) for lane in LANES]
        specs += [
            self.work_queue(self.channel_queue(c, lane), channel_key(c, lane))
            for c in self.channels
            for lane in LANES
        ]
        for delay in self.retry_delays:
            specs += [self._retry_spec(delay, slot) for slot in range(JITTER_SLOTS)]
        specs.append(
            QueueSpec(
                name=self.dead_queue,
                exchange=self.dead_exchange,
                arguments={"x-queue-type": "quorum"},
            )
        )
        return specs

    def _retry_spec(self, delay: Delay, slot: int) -> QueueSpec:
        tier = retry_slot(delay.label, slot)
        return QueueSpec(
            name=self.retry_queue(tier),
            exchange=self.retry_exchange,
            binding_arguments={"x-match": "all", "tier": tier},
            arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": round(slot_seconds(delay, slot) * 1000),
                # No dead-letter routing key: the message returns under its own key.
                "x-dead-letter-exchange": self.exchange,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )

    def declarations(self) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        """Every declaration as (pika channel method, args, kwargs), exchanges first."""
        calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
            ("exchange_declare", (self.exchange,), {"exchange_type": "topic", "durable": True}),
            (
                "exchange_declare",
                (self.retry_exchange,),
                {"exchange_type": "headers", "durable": True},
            ),
            (
                "exchange_declare",
                (self.dead_exchange,),
                {"exchange_type": "fanout", "durable": True},
            ),
        ]
        for spec in self.queues():
            calls.append(
                ("queue_declare", (spec.name,), {"durable": True, "arguments": spec.arguments})
            )
            calls.append(
                (
                    "queue_bind",
                    (spec.name, spec.exchange),
                    {"routing_key": spec.routing_key, "arguments": spec.binding_arguments},
                )
            )
        return calls

    def declare_blocking(self, channel: Any) -> None:
        """Declare everything on a `BlockingChannel`; returns when the broker has answered."""
        for method, args, kwargs in self.declarations():
            getattr(channel, method)(*args, **kwargs)

    def delete_blocking(self, channel: Any) -> None:
        """Delete every queue and exchange of this prefix (tests and benchmarks clean up)."""
        for spec in self.queues():
            channel.queue_delete(spec.name)
        for exchange in (self.exchange, self.retry_exchange, self.dead_exchange):
            channel.exchange_delete(exchange)

    def declare_async(self, channel: Any, on_done: Callable[[], None]) -> None:
        """Declare everything on an asynchronous channel, then call `on_done`."""
        calls = self.declarations()

        def step(index: int) -> None:
            if index == len(calls):
                on_done()
                return
            method, args, kwargs = calls[index]
            getattr(channel, method)(*args, callback=lambda _frame: step(index + 1), **kwargs)

        step(0)
