"""Group commit: concurrent plain messages share statements, and each gets its own outcome."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError

from producer_api import intake
from producer_api.group_commit import GroupCommitter
from shared.models import Message, OutboxEntry
from shared.runtime import Runtime
from tests.conftest import new_tenant
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
