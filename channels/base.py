"""The contract every channel adapter implements.

`send(delivery)` makes one attempt and says how it went: sent, a transient failure worth a
retry, a permanent one, or deferred (not attempted: every provider account is slowed down, over
its rate or behind an open breaker; it comes back later without using up an attempt). It never
lets a provider's exception escape: the worker runtime (`channels.worker`) decides on retries,
dead letters, fallback and records from the `Result` alone.

What a delivery is sent to is resolved by the worker before `send`: `address` is the bare
address of the message's `to`, or the user's own address of the channel's `address_kind`;
`devices` are the user's push targets when the channel `needs_devices`; `endpoint` is the app's
endpoint a `{"endpoint": name}` recipient names.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import redis

from shared.outbound import OutboundPolicy
from shared.settings import Settings

if TYPE_CHECKING:
    from channels.accounts import AccountGate


class Outcome(enum.Enum):
    """How one attempt ended."""

    SENT = "sent"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    DEFERRED = "deferred"


@dataclass(frozen=True)
class Result:
    """The outcome of one attempt, with a reason when it failed.

    `retry_after` (seconds) is the provider's or the rate limit's word on when to come back;
    `account` names the provider account that answered; `gone_devices` are ids of the user's
    devices that the provider says no longer exist, for the worker to remove; `receipt` is
    what the channel named a send that went through, kept on the delivery (web: its position
    in the live feed).
    """

    outcome: Outcome
    detail: str | None = None
    retry_after: float | None = None
    account: str | None = None
    gone_devices: tuple[int, ...] = ()
    receipt: str | None = None

    @classmethod
    def sent(cls, detail: str | None = None, **extra: Any) -> Result:
        return cls(Outcome.SENT, detail, **extra)

    @classmethod
    def transient(cls, detail: str, **extra: Any) -> Result:
        return cls(Outcome.TRANSIENT, detail, **extra)

    @classmethod
    def permanent(cls, detail: str, **extra: Any) -> Result:
        return cls(Outcome.PERMANENT, detail, **extra)

    @classmethod
    def deferred(cls, detail: str, retry_after: float, **extra: Any) -> Result:
        return cls(Outcome.DEFERRED, detail, retry_after=retry_after, **extra)


@dataclass(frozen=True)
class DeviceTarget:
    """One push target of a user: an FCM or APNs token, or a Web Push subscription."""

    id: int
    platform: str
    token: str | None
    subscription: dict[str, Any] | None


@dataclass(frozen=True)
class EndpointTarget:
    """A webhook or chat robot of the app, as `PUT /v1/endpoints/{name}` stored it."""

    name: str
    kind: str
    url: str
    secret: str | None


@dataclass(frozen=True)
class OutboundDelivery:
    """Everything a channel needs to send one delivery."""

    delivery_id: str
    message_id: str
    app_id: str
    channel: str
    user_id: str | None
    address: str | None
    category: str
    content: dict[str, Any]
    created_at: datetime
    attempt: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    priority: str = "normal"
    devices: tuple[DeviceTarget, ...] = ()
    endpoint: EndpointTarget | None = None

    def part(self, fields: tuple[str, ...] = ()) -> dict[str, Any]:
        """The message's rendered template part for this channel, or else its literal content
        (`title`, `body`, `url`, `data`); `fields` name what the caller reads, each present."""
        rendered = (self.content.get("parts") or {}).get(self.channel)
        chosen: dict[str, Any] = dict(rendered) if rendered else dict(self.content)
        return {name: chosen.get(name) for name in fields} if fields else chosen


@dataclass(frozen=True)
class ChannelContext:
    """What a channel may use: the settings (with the configuration file's providers), a Redis
    client, the gate of its provider accounts (rate limits, slow-downs, breakers), and the
    policy every URL an app supplied is called through (`shared.outbound.outbound_client`)."""

    settings: Settings
    redis: redis.Redis
    accounts: AccountGate
    outbound: OutboundPolicy


class Channel(ABC):
    """One channel (web, email, sms, ...): subclasses set `name` and implement `send`.

    `reaches` names the bare address kinds of a message's `to` (`email`, `phone`, `endpoint`)
    the channel can deliver to without a user; `serves_users` says whether it reaches the app's
    users too, at their own `address_kind` (`email`, `phone`) or their devices (`needs_devices`).
    """

    name: ClassVar[str]
    reaches: ClassVar[frozenset[str]] = frozenset()
    serves_users: ClassVar[bool] = True
    address_kind: ClassVar[str | None] = None
    needs_devices: ClassVar[bool] = False
    #: Sends of one batch in flight at once. A channel whose send is one round trip to a
    #: provider sets more, so that a batch of 100 does not hold its claims for 100 round trips
    #: in a row (the worker lets a claim stand for `CLAIM_SECONDS`); its `send` is then called
    #: from several threads.
    send_threads: ClassVar[int] = 1

    def __init__(self, context: ChannelContext) -> None:
        self.context = context

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """Whether the operator has set this channel up (`make run` starts a worker for each
        channel that is); a channel that needs no provider settings always is."""
        return True

    @abstractmethod
    def send(self, delivery: OutboundDelivery) -> Result:
        """Make one attempt; never raise."""

    def send_many(self, deliveries: Sequence[OutboundDelivery]) -> list[Result]:
        """One attempt each, results in order, `send_threads` at a time; a channel that can
        share round trips overrides this (the worker always calls it with a whole batch)."""
        if self.send_threads <= 1 or len(deliveries) <= 1:
            return [self.send(delivery) for delivery in deliveries]
        with ThreadPoolExecutor(min(self.send_threads, len(deliveries))) as pool:
            return list(pool.map(self.send, deliveries))

    def close(self) -> None:  # noqa: B027 - optional hook, most channels hold nothing
        """Release connections; the worker calls it on shutdown."""
