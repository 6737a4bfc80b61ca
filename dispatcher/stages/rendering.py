"""Stage 3: each channel sends its own part of the content; one without a part fails."""

from __future__ import annotations

from datetime import datetime

from dispatcher.stages.base import Candidate, PerDeliveryStage, Verdict


class Rendering(PerDeliveryStage):
    """Templates render with the message's params when the message is accepted (one that does
    not is refused there, with the field at fault); what can still be missing at dispatch is a
    channel the template has no part for, such as a fallback channel. That delivery fails with
    the reason, and the others go on."""

    name = "rendering"

    def decide_one(self, candidate: Candidate, now: datetime) -> Verdict | None:
        if candidate.message.part(candidate.channel) is not None:
            return None
        return Verdict(
            "failed",
            f"template {candidate.message.template!r} has no {candidate.channel} part",
        )
