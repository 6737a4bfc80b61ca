"""Stage 4: the app's discard switch cancels its messages, all of them or some templates'."""

from __future__ import annotations

from datetime import datetime

from dispatcher.stages.base import Candidate, PerDeliveryStage, Verdict


class Discard(PerDeliveryStage):
    """`canceled` while the app's policy (`PUT /v1/policy`) discards all its messages or the
    message's template."""

    name = "discard"

    def decide_one(self, candidate: Candidate, now: datetime) -> Verdict | None:
        policy = candidate.policy
        if policy.discard_all:
            return Verdict("canceled", "the app's discard switch is on")
        template = candidate.message.template
        if template is not None and template in policy.discard_templates:
            return Verdict("canceled", f"template {template!r} is switched off")
        return None
