"""Best-effort Redis calls: they give up fast, and a breaker leaves a failing Redis alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.best_effort_redis import BestEffortRedis, Breaker
from tests.fault_proxy import FaultProxy


@pytest.fixture
def proxied() -> Iterator[tuple[FaultProxy, BestEffortRedis]]:
    with FaultProxy("127.0.0.1", 6379) as proxy:
        # A cool-down far longer than the test: no call in it may reach Redis.
        best_effort = BestEffortRedis(f"redis://127.0.0.1:{proxy.port}/0", cool_down=600)
        yield proxy, best_effort
        best_effort.close()


def test_a_hung_redis_gets_the_fallback_and_is_then_left_alone(
    proxied: tuple[FaultProxy, BestEffortRedis],
) -> None:
    proxy, best_effort = proxied
    assert best_effort.call("a test", lambda client: client.ping(), False) is True
    proxy.hang()
    assert best_effort.call("a test", lambda client: client.ping(), False) is False
    reached: list[str] = []

    def reach(_client: object) -> str:
        reached.append("called")
        return "called"

    assert best_effort.call("a test", reach, "skipped") == "skipped"
    assert reached == [], "Redis was called while the breaker was open"


def test_an_error_reply_is_the_calls_fault_not_an_outage(
    proxied: tuple[FaultProxy, BestEffortRedis],
) -> None:
    _, best_effort = proxied
    refused = best_effort.call("a test", lambda client: client.execute_command("NO-SUCH"), "x")
    assert refused == "x"
    assert best_effort.call("a test", lambda client: client.ping(), False) is True


def test_the_breaker_leaves_redis_alone_for_its_cool_down_then_lets_one_probe_through() -> None:
    now = [100.0]
    breaker = Breaker(cool_down=3.0, clock=lambda: now[0])
    assert breaker.allows()
    assert breaker.failed() is True
    assert breaker.failed() is False, "already open: only the first failure opens it"
    now[0] += 2.9
    assert not breaker.allows()
    now[0] += 0.2
    assert breaker.allows(), "the cool-down is over: one call probes"
    assert not breaker.allows(), "only one probe at a time"
    breaker.failed()
    assert not breaker.allows(), "a failed probe opens it for another cool-down"
    now[0] += 3.1
    assert breaker.allows()
    assert breaker.succeeded() is True
    assert breaker.allows() and breaker.allows(), "closed again: every call goes through"
    assert breaker.succeeded() is False
