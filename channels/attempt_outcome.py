"""What the worker does with a delivery after one attempt: a pure function of the attempt's
number, the channel's `Result` and the retry tiers, so that the whole table of cases is
tested without a broker (`tests/test_attempt_outcome.py`).

- sent: final;
- deferred (not attempted: the provider account is paused, over its rate or behind an open
  breaker): waits in the shortest tier covering `retry_after`, its attempt given back;
- transient with tiers left: `retrying`, in the tier of its attempt (attempt 1 waits in the
  first tier, and so on);
- otherwise (permanent, or transient on the last attempt): `failed`, a dead letter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from channels.base import Outcome, Result
from shared.config_file import Delay


@dataclass(frozen=True)
class AttemptOutcome:
    """The delivery's status after the attempt, the error it records, and the delay tier it
    waits in before it comes back (`None` when it does not come back)."""

    status: str
    error: str | None
    tier: str | None


def tier_covering(delays: Sequence[Delay], seconds: float) -> Delay:
    """The shortest delay tier of at least `seconds` (the longest if none is that long)."""
    return next((d for d in delays if d.seconds >= seconds), delays[-1])


def attempt_outcome(attempt: int, result: Result, delays: Sequence[Delay]) -> AttemptOutcome:
    """See the module docstring; there are `len(delays) + 1` attempts in all."""
    if result.outcome is Outcome.SENT:
        return AttemptOutcome("sent", None, None)
    if result.outcome is Outcome.DEFERRED:
        return AttemptOutcome(
            "deferred", result.detail, tier_covering(delays, result.retry_after or 0).label
        )
    if result.outcome is Outcome.TRANSIENT and attempt <= len(delays):
        return AttemptOutcome("retrying", result.detail, delays[attempt - 1].label)
    return AttemptOutcome("failed", result.detail, None)
