"""Group commit: plain messages from many request threads stored by one statement.

Each accepted message costs the store far more as its own statement and commit than as one row
of a shared one. A `GroupCommitter` takes the messages of concurrent requests on one thread and
stores whatever has queued up while the previous statement ran, as one statement (so one
commit), then releases every waiting request. A lone request is stored at once, so nothing
waits for company; under load the groups grow by themselves. A request is answered only after
its group is committed, so "accepted" still means durable. Should a group fail, its messages
are stored one by one, so that each request gets its own outcome.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import structlog
from sqlalchemy import Engine

from producer_api import intake

log = structlog.get_logger(__name__)

#: The most messages one statement takes (a batch request's size).
MAX_GROUP = 500
#: How long a request waits for its group before giving up with an error.
STORE_TIMEOUT_SECONDS = 30.0


class GroupCommitter:
    """Stores `intake.Accepted` plain messages in groups; see the module docstring."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._waiting: queue.SimpleQueue[tuple[intake.Accepted, Future[None]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def store(self, accepted: intake.Accepted) -> None:
        """Return once `accepted` is committed; raise what storing it raised."""
        self._ensure_started()
        done: Future[None] = Future()
        self._waiting.put((accepted, done))
        done.result(STORE_TIMEOUT_SECONDS)

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
            self._store(group)

    def _store(self, group: list[tuple[intake.Accepted, Future[None]]]) -> None:
        try:
            with intake.plain_connection(self.engine) as connection:
                intake.store(connection, [accepted for accepted, _done in group])
        except Exception as error:
            if len(group) == 1:
                group[0][1].set_exception(error)
                return
            log.warning("api.group_commit_failed", size=len(group), detail=str(error))
            for one in group:
                self._store([one])
            return
        for _accepted, done in group:
            done.set_result(None)
