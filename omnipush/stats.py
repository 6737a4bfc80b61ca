"""`omnipush stats`: how every channel is doing right now, from the store and Redis.

Per channel: deliveries waiting for a worker (`pending`, `queued` and `retrying`, as in
shared/statuses.py, are "queued"), being sent (`sending`, "in flight"); what was sent, failed
for good and sent to a retry tier in the last minute and the last hour (counted from the
trace's `sent`, `failed` and `retrying` events of the channel's deliveries, so a delivery
retried twice counts twice, and a deferred one counts as retrying); the dead letters waiting
for a replay; and the provider accounts whose circuit breaker is open.

The windowed counts read the trace of the last hour; `events` has no index on its time, so on
a very large trace this is a scan an operator pays for once per call, never the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import Connection, case, func, select

from channels.accounts import OpenBreaker, open_breakers
from shared.ids import utcnow
from shared.models import DeadLetter, Delivery, Event
from shared.statuses import DELIVERY_WAITING

IN_FLIGHT = ("sending",)
WINDOWED = ("sent", "failed", "retrying")
COLUMNS = (
    "queued",
    "in_flight",
    "sent_1m",
    "sent_1h",
    "failed_1m",
    "failed_1h",
    "retrying_1m",
    "retrying_1h",
    "dead_letters",
)


@dataclass
class ChannelStats:
    """The counts of one channel (see the module docstring)."""

    channel: str
    queued: int = 0
    in_flight: int = 0
    sent_1m: int = 0
    sent_1h: int = 0
    failed_1m: int = 0
    failed_1h: int = 0
    retrying_1m: int = 0
    retrying_1h: int = 0
    dead_letters: int = 0
    open_breakers: list[OpenBreaker] = field(default_factory=list)


@dataclass(frozen=True)
class Stats:
    """Every channel's counts at `at`; `breakers_known` is False when Redis did not answer."""

    at: datetime
    channels: list[ChannelStats]
    breakers_known: bool = True


def collect(
    connection: Connection, client: redis.Redis | None, prefix: str, now: datetime | None = None
) -> Stats:
    """The stats of every channel with deliveries, dead letters or open breakers; with no
    Redis client (or one that fails) the breakers are unknown."""
    now = now or utcnow()
    by_channel: dict[str, ChannelStats] = {}

    def of(channel: str) -> ChannelStats:
        return by_channel.setdefault(channel, ChannelStats(channel))

    for channel, status, count in connection.execute(
        select(Delivery.channel, Delivery.status, func.count())
        .where(Delivery.status.in_(DELIVERY_WAITING + IN_FLIGHT))
        .group_by(Delivery.channel, Delivery.status)
    ):
        stats = of(channel)
        if status in IN_FLIGHT:
            stats.in_flight += count
        else:
            stats.queued += count
    minute_ago, hour_ago = now - timedelta(minutes=1), now - timedelta(hours=1)
    for channel, stage, last_minute, last_hour in connection.execute(
        select(
            Delivery.channel,
            Event.stage,
            func.sum(case((Event.at >= minute_ago, 1), else_=0)),
            func.count(),
        )
        .join(Delivery, Delivery.id == Event.delivery_id)
        .where(Event.at >= hour_ago, Event.stage.in_(WINDOWED))
        .group_by(Delivery.channel, Event.stage)
    ):
        stats = of(channel)
        setattr(stats, f"{stage}_1m", int(last_minute or 0))
        setattr(stats, f"{stage}_1h", int(last_hour))
    for channel, count in connection.execute(
        select(DeadLetter.channel, func.count())
        .where(DeadLetter.replayed_at.is_(None))
        .group_by(DeadLetter.channel)
    ):
        of(channel).dead_letters = count
    breakers_known = client is not None
    if client is not None:
        try:
            for breaker in open_breakers(client, prefix):
                of(breaker.channel).open_breakers.append(breaker)
        except redis.RedisError:
            breakers_known = False
    return Stats(now, [by_channel[name] for name in sorted(by_channel)], breakers_known)


def as_json(stats: Stats) -> dict[str, Any]:
    """`omnipush stats --json`: one object, channels by name."""
    return {
        "at": stats.at.isoformat(),
        "breakers_known": stats.breakers_known,
        "channels": {
            c.channel: {
                **{name: getattr(c, name) for name in COLUMNS},
                "open_breakers": [
                    {"account": b.account, "seconds_left": round(b.seconds_left, 1)}
                    for b in c.open_breakers
                ],
            }
            for c in stats.channels
        },
    }


def render(stats: Stats) -> str:
    """`omnipush stats`: a table, one line per channel, then the open breakers."""
    header = ("channel", *COLUMNS)
    rows = [(c.channel, *(str(getattr(c, name)) for name in COLUMNS)) for c in stats.channels]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (header, *rows)
    ]
    if not rows:
        lines.append("(no deliveries, dead letters or open breakers)")
    breakers = [b for c in stats.channels for b in c.open_breakers]
    if not stats.breakers_known:
        lines.append("open breakers: unknown (Redis did not answer)")
    elif breakers:
        lines.append("open breakers:")
        lines += [f"  {b.channel}/{b.account}: {b.seconds_left:.0f}s left" for b in breakers]
    else:
        lines.append("open breakers: none")
    return "\n".join(lines)
