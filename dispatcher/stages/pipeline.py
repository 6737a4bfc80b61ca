"""The stages in their order, run over a batch of deliveries; fallback for the unreachable."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import redis

from channels.registry import channel_classes
from dispatcher.fallback_choice import next_channel, recipient_kind
from dispatcher.stages.base import Candidate, Stage, Verdict
from dispatcher.stages.dedup import ContentDedup
from dispatcher.stages.discard import Discard
from dispatcher.stages.frequency_cap import FrequencyCap
from dispatcher.stages.preferences import Preferences
from dispatcher.stages.quiet_hours import QuietHours
from dispatcher.stages.rendering import Rendering
from dispatcher.stages.unreachable import Unreachable
from dispatcher.targets import Target
from shared.ids import new_id


def user_needs() -> dict[str, str | None]:
    """Channel -> what it needs of a user to reach them: `email`, `phone`, `devices` or None."""
    needs: dict[str, str | None] = {}
    for name, cls in channel_classes().items():
        kind = cls.address_kind
        if cls.needs_devices:
            needs[name] = "devices"
        elif kind in ("email", "phone"):
            needs[name] = kind
        else:
            needs[name] = None
    return needs


def standard_stages(client: redis.Redis, prefix: str, fail_open: Collection[str]) -> list[Stage]:
    """Stages 2 to 8 of `dispatcher.stages`, in their order."""
    return [
        Unreachable(user_needs()),
        Rendering(),
        Discard(),
        Preferences(),
        QuietHours(),
        ContentDedup(client, prefix, fail_open="dedup" in fail_open),
        FrequencyCap(client, prefix, fail_open="frequency_cap" in fail_open),
    ]


@dataclass(frozen=True)
class Decision:
    """What became of one delivery: the final verdict and the stage that gave it (None: it is
    to be sent), and the deferral it waits for first, if any."""

    candidate: Candidate
    stage: str | None = None
    verdict: Verdict | None = None
    deferral: Verdict | None = None

    @property
    def status(self) -> str:
        if self.verdict is not None:
            return self.verdict.status
        return "deferred" if self.deferral is not None else "queued"


class PolicyPipeline:
    """Runs `stages` in order over the deliveries of a batch (see `dispatcher.stages`)."""

    def __init__(self, stages: Sequence[Stage], reaches: Mapping[str, frozenset[str]]) -> None:
        self.stages = list(stages)
        self.reaches = reaches

    def run(
        self,
        candidates: Sequence[Candidate],
        now: datetime,
        already: Mapping[tuple[str, str], set[str]] | None = None,
    ) -> list[Decision]:
        """A decision for each candidate, then for each fallback delivery that takes over from
        an unreachable one (those go through every stage too). `already` names the channels
        each (message id, recipient) has deliveries on besides the candidates'."""
        used: dict[tuple[str, str], set[str]] = defaultdict(set)
        for key, channels in (already or {}).items():
            used[key] |= channels
        for candidate in candidates:
            used[(candidate.message.id, candidate.target.recipient)].add(candidate.channel)
        decisions: list[Decision] = []
        pending = list(candidates)
        while pending:
            decided = self._through_stages(pending, now)
            decisions.extend(decided)
            pending = [
                taking_over
                for decision in decided
                if (taking_over := self._fallback(decision, used)) is not None
            ]
        return decisions

    def _through_stages(self, candidates: Sequence[Candidate], now: datetime) -> list[Decision]:
        decisions = [Decision(c) for c in candidates]
        standing = list(range(len(candidates)))
        for stage in self.stages:
            if not standing:
                break
            verdicts = stage.decide([candidates[i] for i in standing], now)
            still = []
            for i, verdict in zip(standing, verdicts, strict=True):
                if verdict is None:
                    still.append(i)
                elif verdict.final:
                    decisions[i] = replace(decisions[i], stage=stage.name, verdict=verdict)
                else:
                    decisions[i] = replace(decisions[i], deferral=verdict)
                    still.append(i)
            standing = still
        return decisions

    def _fallback(
        self, decision: Decision, used: dict[tuple[str, str], set[str]]
    ) -> Candidate | None:
        """The delivery that takes over from an unreachable one, when the message has a
        fallback channel left that reaches the recipient's kind."""
        failed = decision.candidate
        if decision.stage != "unreachable" or not failed.message.fallback:
            return None
        taken = used[(failed.message.id, failed.target.recipient)]
        channel = next_channel(
            failed.channel,
            recipient_kind(failed.target.recipient),
            failed.message.fallback,
            taken,
            self.reaches,
        )
        if channel is None:
            return None
        taken.add(channel)
        target = Target(
            failed.target.recipient, failed.target.user_id, failed.target.address, channel
        )
        return replace(
            failed,
            delivery_id=new_id("dlv"),
            target=target,
            fallback_of=failed.delivery_id,
            fallback_from=failed.channel,
        )
