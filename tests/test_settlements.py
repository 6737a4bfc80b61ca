"""Sources are settled once every publication made for them is done, and only then."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from shared.amqp.link import PublishError
from shared.amqp.settlements import Settlements


def futures(count: int) -> list[Future[None]]:
    return [Future() for _ in range(count)]


def test_a_group_is_settled_once_its_last_confirm_comes_in() -> None:
    settled: list[bool] = []
    group = futures(3)
    settlements = Settlements()
    settlements.when_confirmed(group, settled.append)
    group[0].set_result(None)
    group[2].set_result(None)
    assert settled == [] and not settlements.drain(0)
    group[1].set_result(None)
    assert settled == [True] and settlements.drain(0)


def test_a_group_with_one_refused_publication_is_settled_unconfirmed() -> None:
    settled: list[bool] = []
    group = futures(2)
    Settlements().when_confirmed(group, settled.append)
    group[0].set_exception(PublishError("nacked by the broker"))
    group[1].set_result(None)
    assert settled == [False]


def test_a_group_with_nothing_published_is_settled_at_once() -> None:
    settled: list[bool] = []
    Settlements().when_confirmed([], settled.append)
    assert settled == [True]


def test_drain_waits_for_confirms_that_come_from_another_thread() -> None:
    settled: list[bool] = []
    group = futures(50)
    settlements = Settlements()
    settlements.when_confirmed(group, settled.append)

    def confirm_all() -> None:
        for future in group:
            future.set_result(None)

    threading.Thread(target=confirm_all).start()
    assert settlements.drain(10)
    assert settled == [True]
