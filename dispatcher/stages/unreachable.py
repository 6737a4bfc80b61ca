"""Stage 2: a channel that has nothing to send to for the recipient fails that delivery."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from dispatcher.stages.base import Candidate, PerDeliveryStage, Verdict


class Unreachable(PerDeliveryStage):
    """`failed` when the channel needs an address kind, devices or an endpoint the recipient
    lacks. `needs[channel]` is what the channel needs of a user: `email`, `phone`, `devices`,
    or nothing (the web inbox reaches any user)."""

    name = "unreachable"

    def __init__(self, needs: Mapping[str, str | None]) -> None:
        self.needs = needs

    def decide_one(self, candidate: Candidate, now: datetime) -> Verdict | None:
        if candidate.target.recipient.startswith("endpoint:"):
            if candidate.endpoint_known:
                return None
            return Verdict("failed", f"the app has no endpoint {candidate.target.address!r}")
        if candidate.target.user_id is None:
            return None  # a bare address is its own address
        need = self.needs.get(candidate.channel)
        facts = candidate.recipient
        if need is None:
            return None
        if need == "devices":
            if facts is not None and facts.devices:
                return None
            return Verdict("failed", "the user has no devices")
        if facts is not None and getattr(facts, need):
            return None
        return Verdict("failed", f"the user has no {need} address")
