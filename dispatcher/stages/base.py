"""The contract of a policy stage, and what each stage is given and answers."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from dispatcher.targets import Target
from shared.policy import Policy


@dataclass(frozen=True)
class MessageFacts:
    """What the stages read of the message a delivery belongs to."""

    id: str
    app_id: str
    category: str
    priority: str
    content: Mapping[str, Any]
    dedup_key: str | None = None
    fallback: Sequence[str] | None = None
    _digests: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def template(self) -> str | None:
        """The code of the template the content was rendered from, if it was."""
        code = self.content.get("template")
        return code if isinstance(code, str) else None

    def part(self, channel: str) -> Mapping[str, Any] | None:
        """What `channel` sends: the template's part rendered for it, or the literal content;
        None when the message was rendered from a template that has no part for `channel`."""
        if self.template is None:
            return self.content
        part = (self.content.get("parts") or {}).get(channel)
        return part if isinstance(part, Mapping) else None

    def content_digest(self, channel: str) -> str:
        """A digest of what `channel` sends, the same for the same content; worked out once
        per channel (a topic's thousands of deliveries send the same)."""
        digests = self._digests
        if channel not in digests:
            encoded = json.dumps(
                self.part(channel) or {}, sort_keys=True, separators=(",", ":"), default=str
            )
            digests[channel] = hashlib.sha256(encoded.encode()).hexdigest()
        return digests[channel]


@dataclass(frozen=True)
class RecipientFacts:
    """What the stages read of a user recipient (a user the app never registered has none)."""

    email: bool = False
    phone: bool = False
    devices: bool = False
    timezone: str | None = None
    preferences: Mapping[str, Mapping[str, bool]] = field(default_factory=dict)
    quiet_hours: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Candidate:
    """One delivery being decided: a target of a message, and what the stages read about it.

    `endpoint_known` says, of an endpoint recipient, whether the app has that endpoint.
    """

    delivery_id: str
    target: Target
    message: MessageFacts
    policy: Policy
    recipient: RecipientFacts | None = None
    endpoint_known: bool = True
    #: The unreachable delivery this one takes over from, and its channel.
    fallback_of: str | None = None
    fallback_from: str | None = None

    @property
    def channel(self) -> str:
        return self.target.channel

    def content_digest(self) -> str:
        """A digest of what this delivery sends, the same for the same content."""
        return self.message.content_digest(self.channel)


#: The statuses a verdict may give; `deferred` is the one that is not final.
VERDICT_STATUSES = ("failed", "canceled", "suppressed", "deferred", "deduplicated", "throttled")


@dataclass(frozen=True)
class Verdict:
    """What a stage decided about one delivery, and why (the reason is shown to the app)."""

    status: str
    reason: str
    release_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.status != "deferred"


class Stage(ABC):
    """One policy stage: a verdict (or None: it goes on) for each candidate it is given."""

    #: The stage's name in the trace, and in `fail_open` for the stages that use Redis.
    name: ClassVar[str]

    @abstractmethod
    def decide(self, candidates: Sequence[Candidate], now: datetime) -> list[Verdict | None]:
        """One answer per candidate, in order."""


class PerDeliveryStage(Stage):
    """A stage that decides each delivery on its own, from its facts alone."""

    def decide(self, candidates: Sequence[Candidate], now: datetime) -> list[Verdict | None]:
        return [self.decide_one(candidate, now) for candidate in candidates]

    @abstractmethod
    def decide_one(self, candidate: Candidate, now: datetime) -> Verdict | None:
        """The verdict on one delivery, or None when it goes on."""
