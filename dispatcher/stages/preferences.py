"""Stage 5: a recipient who opted out of a category on a channel is not sent it there."""

from __future__ import annotations

from datetime import datetime

from dispatcher.stages.base import Candidate, PerDeliveryStage, Verdict

#: What a recipient cannot opt out of: codes they asked for.
UNSUPPRESSIBLE = frozenset({"verification"})


class Preferences(PerDeliveryStage):
    """`suppressed` when the user's preferences say `{category: {channel: false}}`."""

    name = "preferences"

    def decide_one(self, candidate: Candidate, now: datetime) -> Verdict | None:
        category = candidate.message.category
        if candidate.recipient is None or category in UNSUPPRESSIBLE:
            return None
        if candidate.recipient.preferences.get(category, {}).get(candidate.channel, True):
            return None
        return Verdict("suppressed", f"the user opted out of {category} on {candidate.channel}")
