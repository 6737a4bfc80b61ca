"""The worker's decision after an attempt, from a table (no broker, no store)."""

from __future__ import annotations

import pytest

from channels.attempt_outcome import AttemptOutcome, attempt_outcome, tier_covering
from channels.base import Result
from shared.config_file import DEFAULT_RETRY_DELAYS, Delay

DELAYS = (Delay("5s", 5), Delay("30s", 30), Delay("2m", 120))


@pytest.mark.parametrize(
    ("attempt", "result", "expected"),
    [
        (1, Result.sent(), AttemptOutcome("sent", None, None)),
        (4, Result.sent("backup"), AttemptOutcome("sent", None, None)),
        (1, Result.transient("503"), AttemptOutcome("retrying", "503", "5s")),
        (3, Result.transient("503"), AttemptOutcome("retrying", "503", "2m")),
        (4, Result.transient("503"), AttemptOutcome("failed", "503", None)),
        (1, Result.permanent("bad number"), AttemptOutcome("failed", "bad number", None)),
        (1, Result.deferred("429", retry_after=7), AttemptOutcome("deferred", "429", "30s")),
        (4, Result.deferred("429", retry_after=7), AttemptOutcome("deferred", "429", "30s")),
        (1, Result.deferred("429", retry_after=3600), AttemptOutcome("deferred", "429", "2m")),
        (2, Result.deferred("busy", retry_after=5), AttemptOutcome("deferred", "busy", "5s")),
    ],
    ids=[
        "sent",
        "sent-on-the-last-attempt",
        "transient-waits-in-the-first-tier",
        "transient-waits-in-its-attempts-tier",
        "transient-on-the-last-attempt-fails",
        "permanent-fails-at-once",
        "deferred-waits-in-the-tier-covering-retry-after",
        "deferred-on-the-last-attempt-still-waits",
        "deferred-longer-than-every-tier-waits-in-the-longest",
        "deferred-exactly-a-tier",
    ],
)
def test_what_the_worker_does_after_an_attempt(
    attempt: int, result: Result, expected: AttemptOutcome
) -> None:
    assert attempt_outcome(attempt, result, DELAYS) == expected


def test_the_default_tiers_cover_a_minute_with_two_minutes() -> None:
    assert tier_covering(DEFAULT_RETRY_DELAYS, 60).label == "2m"
