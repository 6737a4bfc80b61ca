"""Group commit: plain messages from many request threads stored by one statement.

Each accepted message costs the store far more as its own statement and commit than as one row
of a shared one. A `GroupCommitter` takes the messages of concurrent requests on one thread and
stores whatever has queued up while the previous statement ran, as one statement (so one
commit), then releases every waiting request. A lone request is stored at once, so nothing
waits for company; under load the groups grow by themselves. A request is answered only after
its group is committed, so "accepted" still means durable. Should a group fail for one of its
messages, its messages are stored one by one, so that each request gets its own outcome; should
it fail because the store is away, every request of the group gets that error at once.

A request waits at most `timeout` for its group. One that gives up while its message is still
queued withdraws it, so the message is never stored and the caller can say so; one that gives up
while its statement runs cannot know the outcome (the statement may still commit) and is told
so (`StoreTimeout.may_be_stored`), so that its caller never claims a failure that later turns
into a sent message.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import structlog
from sqlalchemy import Engine

from producer_api import intake
from shared.store_outage import is_store_outage

log = structlog.get_logger(__name__)

#: The most messages one statement takes (a batch request's size).
MAX_GROUP = 500
#: How long a request waits for its group; clients commonly give up after 30 s, and an answer
#: that arrives is worth more than one they never see.
STORE_TIMEOUT_SECONDS = 10.0

_Waiting = tuple[intake.Accepted, Future[None]]


class StoreTimeout(Exception):
    """The store did not confirm a message in time.

    `may_be_stored` is False when the message was withdrawn before any statement took it (it
    will never be stored), True when its statement was running (it may yet commit).
    """

    def __init__(self, may_be_stored: bool) -> None:
        super().__init__("the store did not confirm the message in time")
        self.may_be_stored = may_be_stored


class GroupCommitter:
    """Stores `intake.Accepted` plain messages in groups; see the module docstring."""

    def __init__(self, engine: Engine, timeout: float = STORE_TIMEOUT_SECONDS) -> None:
        self.engine = engine
        self.timeout = timeout
        self._waiting: queue.SimpleQueue[_Waiting] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def store(self, accepted: intake.Accepted) -> None:
        """Return once `accepted` is committed; raise what storing it raised, or StoreTimeout."""
        self._ensure_started()
        done: Future[None] = Future()
        self._waiting.put((accepted, done))
        try:
            done.result(self.timeout)
        except TimeoutError:
            if done.cancel():
                raise StoreTimeout(may_be_stored=False) from None
            if not done.done():
                raise StoreTimeout(may_be_stored=True) from None
            done.result()  # it ended just now: its own outcome

    def _ensure_started(self) -> None:
        # Started on first use, in the process that serves (gunicorn forks before that).
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="omnipush-group-commit", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            group = [self._waiting.get()]
            while len(group) < MAX_GROUP:
                try:
                    group.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            # Marks each future running, so that its caller can no longer withdraw it; the
            # ones already withdrawn are left out.
            group = [
                (accepted, done) for accepted, done in group if done.set_running_or_notify_cancel()
            ]
            if group:
                self._store(group)

    def _store(self, group: list[_Waiting]) -> None:
        try:
            with intake.plain_connection(self.engine) as connection:
                intake.store(connection, [accepted for accepted, _done in group])
        except Exception as error:
            if len(group) == 1 or is_store_outage(error):
                for _accepted, done in group:
                    done.set_exception(error)
                return
            log.warning("api.group_commit_failed", size=len(group), detail=str(error))
            for one in group:
                self._store([one])
            return
        for _accepted, done in group:
            done.set_result(None)
