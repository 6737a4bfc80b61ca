"""The outbox relay: hands committed messages to RabbitMQ and marks them only once confirmed.

The API commits a message and its outbox row together; the relay publishes due rows in batches
with asynchronous confirms and marks them published, with a `queued` event, only for the
messages the broker confirmed. A row claimed by a relay that crashed is simply still unmarked,
so the next pass publishes it again (consumers are idempotent). On PostgreSQL the rows are
claimed with SKIP LOCKED, so several relays can run, and LISTEN/NOTIFY wakes the relay as soon
as the API commits; on SQLite it polls briefly.
"""

from __future__ import annotations

import select
import signal
import threading
from concurrent.futures import wait
from types import FrameType
from typing import Any

import structlog
from sqlalchemy import select as sql_select
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared.amqp.link import AmqpLink, Outgoing
from shared.db import OUTBOX_CHANNEL, is_postgresql
from shared.ids import utcnow
from shared.models import Message, OutboxEntry
from shared.payloads import DispatchPayload, encode
from shared.runtime import Runtime
from shared.trace import event_row, record_events

log = structlog.get_logger(__name__)

CONFIRM_TIMEOUT_SECONDS = 30.0


class OutboxRelay:
    """Publishes due outbox rows until stopped; see the module docstring."""

    def __init__(
        self,
        runtime: Runtime,
        link: AmqpLink,
        *,
        batch_size: int = 500,
        poll_seconds: float | None = None,
        linger_seconds: float = 0.005,
    ) -> None:
        self.runtime = runtime
        self.link = link
        self.batch_size = batch_size
        self._postgres = is_postgresql(runtime.engine)
        # With LISTEN/NOTIFY the poll only picks up scheduled rows coming due.
        self.poll_seconds = poll_seconds or (1.0 if self._postgres else 0.05)
        # After a wake-up, wait this long for more rows: one batch instead of many tiny ones.
        self.linger_seconds = linger_seconds
        self._stopping = threading.Event()
        self._schema = DispatchPayload()
        self._listener: Any = None

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("relay.stopping", signal=signal.Signals(signum).name)
            self._stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        self.link.start()
        try:
            while not self._stopping.is_set():
                if not self.link.wait_ready(timeout=0.5):
                    continue
                try:
                    published = self.relay_once()
                except SQLAlchemyError as error:
                    log.warning("relay.store_unavailable", detail=str(error))
                    self._drop_listener()
                    self._stopping.wait(1.0)
                    continue
                if published < self.batch_size:
                    self._wait_for_work()
        finally:
            self._drop_listener()
            self.link.close()
            log.info("relay.stopped")

    def relay_once(self) -> int:
        """Publish one batch of due rows; returns how many the broker confirmed."""
        with self.runtime.sessions() as session, session.begin():
            rows = self._claim(session)
            if not rows:
                return 0
            futures = self.link.publish_batch(
                [Outgoing(row.routing_key, encode(self._schema, row.payload)) for row in rows]
            )
            wait(futures, timeout=CONFIRM_TIMEOUT_SECONDS)
            confirmed = [
                row
                for row, future in zip(rows, futures, strict=True)
                if future.done() and future.exception() is None
            ]
            failures = len(rows) - len(confirmed)
            if failures:
                log.warning("relay.unconfirmed", count=failures)
            self._mark_published(session, confirmed)
        if confirmed:
            log.info("relay.published", count=len(confirmed))
        return len(confirmed)

    def _claim(self, session: Session) -> list[OutboxEntry]:
        query = (
            sql_select(OutboxEntry)
            .where(OutboxEntry.published_at.is_(None), OutboxEntry.available_at <= utcnow())
            .order_by(OutboxEntry.id)
            .limit(self.batch_size)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        return list(session.scalars(query))

    def _mark_published(self, session: Session, rows: list[OutboxEntry]) -> None:
        if not rows:
            return
        now = utcnow()
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id.in_([row.id for row in rows]))
            .values(published_at=now)
        )
        message_ids = [row.message_id for row in rows]
        session.execute(
            update(Message)
            .where(Message.id.in_(message_ids), Message.status == "accepted")
            .values(status="queued", updated_at=now)
        )
        record_events(session, [event_row(mid, "queued") for mid in message_ids])

    def _wait_for_work(self) -> None:
        if not self._postgres:
            self._stopping.wait(self.poll_seconds)
            return
        try:
            listener = self._ensure_listener()
            readable, _, _ = select.select([listener], [], [], self.poll_seconds)
            if readable:
                self._stopping.wait(self.linger_seconds)
                listener.poll()
                listener.notifies.clear()
        except Exception as error:  # any driver or socket error: listen again next time
            log.warning("relay.listen_failed", detail=str(error))
            self._drop_listener()
            self._stopping.wait(self.poll_seconds)

    def _ensure_listener(self) -> Any:
        if self._listener is None:
            raw = self.runtime.engine.raw_connection()
            connection = raw.dbapi_connection
            assert connection is not None
            connection.autocommit = True
            cursor = connection.cursor()
            cursor.execute(f"LISTEN {OUTBOX_CHANNEL}")
            cursor.close()
            self._listener_owner = raw
            self._listener = connection
        return self._listener

    def _drop_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener_owner.invalidate()
            finally:
                self._listener = None
