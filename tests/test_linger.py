"""A batch waits for more work only while work is flowing: a message that finds the relay or a
consumer idle goes on at once, and one that comes right after a batch waits for company."""

from __future__ import annotations

import pytest

from shared.linger import Linger


@pytest.mark.parametrize(
    ("last_batch_ago", "wait"),
    [(None, 0.0), (0.001, 0.005), (0.049, 0.005), (0.051, 0.0), (5.0, 0.0)],
    ids=["never worked", "just now", "within the flow", "just past it", "long idle"],
)
def test_a_batch_waits_only_while_work_is_flowing(
    last_batch_ago: float | None, wait: float
) -> None:
    now = [100.0]
    linger = Linger(0.005, flowing_within=0.05, clock=lambda: now[0])
    if last_batch_ago is not None:
        now[0] -= last_batch_ago
        linger.worked()
        now[0] += last_batch_ago
    assert linger.wait_seconds() == wait
