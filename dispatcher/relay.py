"""The outbox relay: hands committed messages to RabbitMQ and marks them only once confirmed.

The API commits a message and its outbox row together; the relay publishes due rows in batches
with asynchronous confirms and marks them published, with a `queued` event, only for the
messages the broker confirmed. A single delivery comes the same way, to its channel's queue,
without a `queued` event: a channel worker's fallback delivery (`channels.fallback`), or one the
dispatcher deferred until it may be sent. Every row goes to the lane of its message's
`priority` (`dispatch.high`, `dispatch`, `dispatch.low`, `channel.web.high`...; see
shared/amqp/topology.py), read with the row, with the priority in the payload: so a message
scheduled before there were lanes, or a delivery whose writer named only its channel, still
travels in its lane. A row claimed by a relay that crashed is simply still unmarked, so the
next pass publishes it again (consumers are idempotent). On PostgreSQL the rows are claimed
with SKIP LOCKED, so several relays can run, and LISTEN/NOTIFY wakes the relay as soon as the
API commits; on SQLite it polls briefly.
Each batch's size, the rows confirmed and how long they waited once due are counted
(`shared.pipeline_metrics.RelayMetrics`).
"""

from __future__ import annotations

import select
import threading
from concurrent.futures import wait
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, Row, String, bindparam, func, insert, literal, update
from sqlalchemy import select as sql_select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from shared.amqp.link import AmqpLink, Outgoing
from shared.amqp.topology import DISPATCH_KEY, channel_key, dispatch_key
from shared.db import OUTBOX_CHANNEL, is_postgresql
from shared.ids import utcnow
from shared.linger import Linger
from shared.models import Event, JsonType, Message, OutboxEntry, UTCDateTime, table_of
from shared.payloads import DeliveryPayload, DispatchPayload, encode
from shared.pipeline_metrics import RelayMetrics
from shared.runtime import Runtime
from shared.stop_signals import stop_on_signals
from shared.trace import event_row, record_events

log = structlog.get_logger(__name__)

CONFIRM_TIMEOUT_SECONDS = 30.0

# The relay's statements, built once (building SQL costs more than running it here).
_O = table_of(OutboxEntry)
_M = table_of(Message)
# The message's priority comes along: one primary-key lookup per row, in the same statement.
_DUE = (
    sql_select(
        _O.c.id, _O.c.message_id, _O.c.routing_key, _O.c.payload, _M.c.priority, _O.c.available_at
    )
    .join_from(_O, _M, _M.c.id == _O.c.message_id)
    .where(_O.c.published_at.is_(None), _O.c.available_at <= bindparam("now"))
    .order_by(_O.c.id)
    .limit(bindparam("limit"))
)
_MARK_PUBLISHED = (
    update(_O)
    .where(_O.c.id.in_(bindparam("ids", expanding=True)))
    .values(published_at=bindparam("now"))
)
_MARK_QUEUED = (
    update(_M)
    .where(
        _M.c.id.in_(bindparam("message_ids", expanding=True)),
        _M.c.status.in_(("accepted", "scheduled")),
    )
    .values(status="queued", updated_at=bindparam("now"))
)
# On PostgreSQL the messages are locked in id order first, as the dispatcher locks a batch's:
# the UPDATE alone locks them in the order it finds them, and a relay holding one message while
# it waited for another that a dispatcher held, which waited for the first, was a deadlock.
_TO_QUEUE = (
    sql_select(_M.c.id)
    .where(
        _M.c.id.in_(bindparam("message_ids", expanding=True)),
        _M.c.status.in_(("accepted", "scheduled")),
    )
    .order_by(_M.c.id)
    .with_for_update()
    .cte("to_queue")
)
_MARK_QUEUED_IN_ORDER = (
    update(_M)
    .where(_M.c.id.in_(sql_select(_TO_QUEUE.c.id)))
    .values(status="queued", updated_at=bindparam("now"))
)
# On PostgreSQL the outbox mark, the status change and the `queued` events are one statement.
_QUEUED_EVENTS = insert(table_of(Event)).from_select(
    ["message_id", "at", "stage", "detail"],
    sql_select(
        func.unnest(bindparam("message_id_array", type_=ARRAY(String()))),
        bindparam("now", type_=UTCDateTime()),
        literal("queued"),
        literal({}, JsonType),
    ),
)
_MARK_ALL_AS_ONE = _QUEUED_EVENTS.add_cte(_MARK_PUBLISHED.cte("published")).add_cte(
    _MARK_QUEUED_IN_ORDER.cte("queued")
)


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
        metrics: RelayMetrics | None = None,
    ) -> None:
        self.runtime = runtime
        self.link = link
        self.metrics = metrics or RelayMetrics()
        self.batch_size = batch_size
        self._postgres = is_postgresql(runtime.engine)
        # With LISTEN/NOTIFY the poll only picks up scheduled rows coming due.
        self.poll_seconds = poll_seconds or (1.0 if self._postgres else 0.05)
        # After a wake-up, wait this long for more rows while rows are flowing: one batch
        # instead of many tiny ones, without holding a message that comes alone.
        self._linger = Linger(linger_seconds)
        self._stopping = threading.Event()
        # Most rows are messages to dispatch; a fallback delivery goes to its channel's queue.
        self._dispatch = DispatchPayload()
        self._delivery = DeliveryPayload()
        # On PostgreSQL rows are locked while in flight and skipped by other relays; only the
        # outbox rows: their messages stay free for the API and the workers.
        self._claim = _DUE.with_for_update(skip_locked=True, of=_O) if self._postgres else _DUE
        self._listener: PoolProxiedConnection | None = None

    def install_signal_handlers(self) -> None:
        stop_on_signals(self.stop, "relay.stopping")

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
                if published:
                    self._linger.worked()
                if published < self.batch_size:
                    self._wait_for_work()
        finally:
            self._drop_listener()
            self.link.close()
            log.info("relay.stopped")

    def relay_once(self) -> int:
        """Publish one batch of due rows; returns how many the broker confirmed."""
        with self.runtime.engine.begin() as connection:
            rows = connection.execute(
                self._claim, {"now": utcnow(), "limit": self.batch_size}
            ).all()
            if not rows:
                return 0
            # The `queued` event is of when the rows went out, not of when their confirms came
            # back: by then the dispatcher may have dispatched them already.
            published_at = utcnow()
            futures = self.link.publish_batch([self._outgoing(row) for row in rows])
            wait(futures, timeout=CONFIRM_TIMEOUT_SECONDS)
            confirmed = [
                row
                for row, future in zip(rows, futures, strict=True)
                if future.done() and future.exception() is None
            ]
            failures = len(rows) - len(confirmed)
            if failures:
                log.warning("relay.unconfirmed", count=failures)
            if confirmed:
                self._mark_published(connection, confirmed, published_at)
        now = utcnow()
        self.metrics.observe_batch(
            len(rows), [(now - row.available_at).total_seconds() for row in confirmed]
        )
        if confirmed:
            log.info("relay.published", count=len(confirmed))
        return len(confirmed)

    def _outgoing(self, row: Row[int, str, str, dict[str, Any], str, datetime]) -> Outgoing:
        payload = {**row.payload, "priority": row.priority}
        if row.routing_key == DISPATCH_KEY:
            return Outgoing(dispatch_key(row.priority), encode(self._dispatch, payload))
        return Outgoing(
            channel_key(payload["channel"], row.priority), encode(self._delivery, payload)
        )

    def _mark_published(
        self,
        connection: Connection,
        rows: list[Row[int, str, str, dict[str, Any], str, datetime]],
        now: datetime,
    ) -> None:
        ids = [row.id for row in rows]
        # Only a message handed to the dispatcher is `queued`, not one getting a fallback.
        message_ids = [row.message_id for row in rows if row.routing_key == DISPATCH_KEY]
        if self._postgres:
            params = {"ids": ids, "message_ids": message_ids, "message_id_array": message_ids}
            connection.execute(_MARK_ALL_AS_ONE, params | {"now": now})
            return
        connection.execute(_MARK_PUBLISHED, {"ids": ids, "now": now})
        connection.execute(_MARK_QUEUED, {"message_ids": message_ids, "now": now})
        record_events(connection, [{**event_row(mid, "queued"), "at": now} for mid in message_ids])

    def _wait_for_work(self) -> None:
        if not self._postgres:
            self._stopping.wait(self.poll_seconds)
            return
        try:
            listener = self._ensure_listener()
            readable, _, _ = select.select([listener], [], [], self.poll_seconds)
            if readable:
                if (linger := self._linger.wait_seconds()) > 0:
                    self._stopping.wait(linger)
                listener.poll()
                listener.notifies.clear()
        except Exception as error:  # any driver or socket error: listen again next time
            log.warning("relay.listen_failed", detail=str(error))
            self._drop_listener()
            self._stopping.wait(self.poll_seconds)

    def _ensure_listener(self) -> Any:
        """A pooled connection kept aside in autocommit mode, LISTENing for new outbox rows."""
        if self._listener is None:
            pooled = self.runtime.engine.raw_connection()
            connection = pooled.dbapi_connection
            assert connection is not None
            connection.autocommit = True
            cursor = connection.cursor()
            cursor.execute(f"LISTEN {OUTBOX_CHANNEL}")
            cursor.close()
            self._listener = pooled
        return self._listener.dbapi_connection

    def _drop_listener(self) -> None:
        if self._listener is not None:
            # Never back into the pool: it is in autocommit mode and subscribed.
            self._listener.invalidate()
            self._listener = None
