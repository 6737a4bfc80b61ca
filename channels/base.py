"""The contract every channel adapter implements.

`send(delivery)` makes one attempt and says how it went: sent, a transient failure worth a
retry, or a permanent one. It never lets a provider's exception escape: the worker runtime
decides on retries, dead letters and records from the `Result` alone.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import redis

from shared.settings import Settings


class Outcome(enum.Enum):
    """How one attempt ended."""

    SENT = "sent"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Result:
    """The outcome of one attempt, with a reason when it failed."""

    outcome: Outcome
    detail: str | None = None

    @classmethod
    def sent(cls, detail: str | None = None) -> Result:
        return cls(Outcome.SENT, detail)

    @classmethod
    def transient(cls, detail: str) -> Result:
        return cls(Outcome.TRANSIENT, detail)

    @classmethod
    def permanent(cls, detail: str) -> Result:
        return cls(Outcome.PERMANENT, detail)


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


@dataclass(frozen=True)
class ChannelContext:
    """What a channel may use: the settings, a Redis client."""

    settings: Settings
    redis: redis.Redis


class Channel(ABC):
    """One channel (web, email, sms, ...): subclasses set `name` and implement `send`.

    `reaches` names the bare address kinds of a message's `to` (`email`, `phone`) the channel
    can deliver to without a user; every channel serves the app's users.
    """

    name: ClassVar[str]
    reaches: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, context: ChannelContext) -> None:
        self.context = context

    @abstractmethod
    def send(self, delivery: OutboundDelivery) -> Result:
        """Make one attempt; never raise."""

    def send_many(self, deliveries: Sequence[OutboundDelivery]) -> list[Result]:
        """One attempt each, results in order; a channel that can share round trips overrides
        this (the worker always calls it with a whole batch)."""
        return [self.send(delivery) for delivery in deliveries]

    def close(self) -> None:  # noqa: B027 - optional hook, most channels hold nothing
        """Release connections; the worker calls it on shutdown."""
