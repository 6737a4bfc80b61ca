"""Group commit: concurrent plain messages share statements, and each gets its own outcome."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from producer_api import intake
from producer_api.group_commit import GroupCommitter, StoreTimeout
from shared.models import Message, OutboxEntry
from shared.runtime import Runtime
from tests.conftest import isolated_settings, new_tenant
from tests.held_store import messages_locked, statements_waiting_for_a_lock
from tests.stack import wait_until

BODY = {
    "to": [{"user_id": "alice"}],
    "channels": ["web"],
    "content": {"title": "Hi", "body": "", "url": None, "data": {}},
    "category": "notification",
    "priority": "normal",
    "send_at": None,
    "expires_at": None,
    "dedup_key": None,
    "callback_url": None,
}


def stored(runtime: Runtime, model: Any, ids: list[str]) -> int:
    column = Message.id if model is Message else OutboxEntry.message_id
    with runtime.engine.connect() as connection:
        return int(connection.scalar(select(func.count()).where(column.in_(ids))) or 0)


def test_messages_queued_while_a_statement_runs_share_the_next_one(runtime: Runtime) -> None:
    app_id = new_tenant(runtime).app_id
    committer = GroupCommitter(runtime.engine)
    statements: list[int] = []
    first_running, others_queued = threading.Event(), threading.Event()

    def hold_the_first(_conn: Any, _cursor: Any, _sql: str, params: Any, *_rest: Any) -> None:
        if threading.current_thread().name != "omnipush-group-commit":
            return
        statements.append(1)
        if len(statements) == 1:
            first_running.set()
            assert others_queued.wait(10)

    event.listen(runtime.engine, "before_cursor_execute", hold_the_first)
    try:
        messages = [intake.accept_plain(app_id, BODY) for _ in range(9)]
        with ThreadPoolExecutor(9) as pool:
            first = pool.submit(committer.store, messages[0])
            assert first_running.wait(10)
            rest = [pool.submit(committer.store, m) for m in messages[1:]]
            wait_until(lambda: committer._waiting.qsize() == 8, 10, "eight queued")
            others_queued.set()
            for done in [first, *rest]:
                done.result(10)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", hold_the_first)
    ids = [m.id for m in messages]
    assert len(statements) == 2, "the eight that waited did not share one statement"
    assert stored(runtime, Message, ids) == stored(runtime, OutboxEntry, ids) == 9


def test_a_message_that_cannot_be_stored_fails_alone(runtime: Runtime) -> None:
    app_id = new_tenant(runtime).app_id
    committer = GroupCommitter(runtime.engine)
    first, *good = [intake.accept_plain(app_id, BODY) for _ in range(3)]
    orphan = intake.accept_plain("app_that_does_not_exist", BODY)
    first_running, release = threading.Event(), threading.Event()

    def hold_the_first(*_args: Any) -> None:
        if threading.current_thread().name == "omnipush-group-commit" and not release.is_set():
            first_running.set()
            assert release.wait(10)

    event.listen(runtime.engine, "before_cursor_execute", hold_the_first)
    try:
        with ThreadPoolExecutor(4) as pool:
            results = [pool.submit(committer.store, first)]
            assert first_running.wait(10)
            results += [pool.submit(committer.store, m) for m in [*good, orphan]]
            wait_until(lambda: committer._waiting.qsize() == 3, 10, "a group of three queued")
            release.set()
            for done in results[:3]:
                done.result(10)
            with pytest.raises(IntegrityError):
                results[3].result(10)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", hold_the_first)
    assert stored(runtime, Message, [m.id for m in [first, *good]]) == 3


@pytest.fixture
def own_store() -> Iterator[Runtime]:
    """A runtime on a database of this test's own, whose tables the test may lock."""
    with isolated_settings() as own:
        built = Runtime.build(own)
        yield built
        built.close()


def test_a_request_that_stops_waiting_is_told_whether_its_message_may_still_be_stored(
    own_store: Runtime,
) -> None:
    runtime, url = own_store, own_store.settings.database_url
    app_id = new_tenant(runtime).app_id
    committer = GroupCommitter(runtime.engine, timeout=1.0)
    running, queued, later = (intake.accept_plain(app_id, BODY) for _ in range(3))
    with messages_locked(url), ThreadPoolExecutor(2) as pool:
        first = pool.submit(committer.store, running)
        wait_until(lambda: statements_waiting_for_a_lock(url) == 1, 10, "the insert to wait")
        # The group thread is held in the first statement: this one stays queued.
        second = pool.submit(committer.store, queued)
        with pytest.raises(StoreTimeout) as withdrawn:
            second.result(10)
        with pytest.raises(StoreTimeout) as undecided:
            first.result(10)
        assert withdrawn.value.may_be_stored is False
        assert undecided.value.may_be_stored is True
        assert stored(runtime, Message, [running.id, queued.id]) == 0
    # The lock is gone: the statement that was running commits after all, as its caller was
    # told it might; the withdrawn message never is, though one queued after it is.
    wait_until(lambda: stored(runtime, Message, [running.id]) == 1, 10, "the first to commit")
    committer.store(later)
    assert stored(runtime, Message, [queued.id]) == 0
    assert stored(runtime, Message, [later.id]) == 1


def test_a_store_outage_fails_a_group_at_once_rather_than_message_by_message(
    runtime: Runtime,
) -> None:
    app_id = new_tenant(runtime).app_id
    committer = GroupCommitter(runtime.engine)
    first, *group = [intake.accept_plain(app_id, BODY) for _ in range(4)]
    first_running, release = threading.Event(), threading.Event()
    group_statements: list[str] = []

    def hold_the_first_then_fail(_conn: Any, _cursor: Any, sql: str, *_rest: Any) -> None:
        if threading.current_thread().name != "omnipush-group-commit":
            return
        if not release.is_set():
            first_running.set()
            assert release.wait(10)
            return
        group_statements.append(sql)
        raise OperationalError(sql, {}, Exception("server closed the connection unexpectedly"))

    event.listen(runtime.engine, "before_cursor_execute", hold_the_first_then_fail)
    try:
        with ThreadPoolExecutor(4) as pool:
            results = [pool.submit(committer.store, first)]
            assert first_running.wait(10)
            results += [pool.submit(committer.store, m) for m in group]
            wait_until(lambda: committer._waiting.qsize() == 3, 10, "a group of three queued")
            release.set()
            results[0].result(10)
            for done in results[1:]:
                with pytest.raises(OperationalError):
                    done.result(10)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", hold_the_first_then_fail)
    assert len(group_statements) == 1, "the outage was tried again message by message"
