"""Retry jitter: each delay tier has jitter slots with shorter TTLs, and a burst of transient
failures is spread over them, so it does not come back in lock-step."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from channels.base import ChannelContext, OutboundDelivery, Outcome, Result
from channels.worker import channel_context
from shared.amqp.topology import JITTER_SLOTS, JITTER_SPAN, Topology, retry_slot
from shared.config_file import DEFAULT_RETRY_DELAYS, Delay
from shared.runtime import Runtime
from tests.conftest import queue_depth
from tests.queued import queued_delivery, running_worker
from tests.stack import wait_until
from tests.test_worker import ScriptedChannel, state

BURST = 12


@pytest.mark.parametrize("delay", DEFAULT_RETRY_DELAYS, ids=lambda d: d.label)
def test_every_tier_has_jitter_slots_from_its_delay_down_to_a_fifth_less(delay: Delay) -> None:
    topology = Topology(prefix="p")
    specs = {
        spec.binding_arguments["tier"]: spec
        for spec in topology.queues()
        if spec.binding_arguments and spec.binding_arguments["tier"].split("-")[0] == delay.label
    }
    slots = [retry_slot(delay.label, slot) for slot in range(JITTER_SLOTS)]
    assert sorted(specs) == sorted(slots)
    # The first slot is the tier's plain queue, as before jitter.
    assert specs[delay.label].name == topology.retry_queue(delay.label) == f"p.retry.{delay.label}"
    ttls = [specs[slot].arguments["x-message-ttl"] for slot in slots]
    assert ttls == sorted(ttls, reverse=True) and len(set(ttls)) == JITTER_SLOTS
    assert ttls[0] == round(delay.seconds * 1000)
    assert ttls[-1] == round(delay.seconds * (1 - JITTER_SPAN) * 1000)


class TimedChannel(ScriptedChannel):
    """A scripted channel that also notes when each attempt came."""

    def __init__(self, context: ChannelContext, script: Sequence[Outcome]) -> None:
        super().__init__(context, script)
        self.times: list[float] = []

    def send(self, delivery: OutboundDelivery) -> Result:
        self.times.append(time.monotonic())
        return super().send(delivery)


def test_a_burst_of_transient_failures_comes_back_spread_over_the_tier(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    script = [Outcome.TRANSIENT] * BURST + [Outcome.SENT] * BURST
    channel = TimedChannel(channel_context(runtime, "web"), script)
    # Queued before the worker starts: the whole burst fails in one batch, at one moment.
    burst = [queued_delivery(runtime) for _ in range(BURST)]
    slots = [runtime.topology.retry_queue(retry_slot("5s", s)) for s in range(JITTER_SLOTS)]
    with running_worker(runtime, channel):
        wait_until(lambda: len(channel.attempts) >= BURST, 10, "the burst's first attempts")
        wait_until(lambda: sum(queue_depth(q) for q in slots) == BURST, 3, "the burst in its tier")
        depths = [queue_depth(q) for q in slots]
        wait_until(
            lambda: all(state(runtime, *pair)[0] == "sent" for pair in burst),
            20,
            "every retry to be sent",
        )
    assert sum(d > 0 for d in depths) >= 2, depths
    failed_at, returned = channel.times[:BURST], channel.times[BURST:]
    assert max(failed_at) - min(failed_at) < 0.5
    # Without jitter they would all come back within a few milliseconds of each other.
    assert max(returned) - min(returned) >= 0.25, returned
    assert min(returned) - max(failed_at) >= 5 * (1 - JITTER_SPAN) - 0.1
