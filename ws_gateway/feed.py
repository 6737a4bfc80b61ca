"""The gateway's reader of the live feed: each notification to the sockets of its user that this
process holds, once each, whatever Redis does.

One background task reads the stream (`shared.live_feed`) from the last entry it handled and
emits each entry to the sockets of the entry's room. When Redis cannot be reached (refused,
dropped, or silent past the read's timeout) it says so once, retries with back-off and reads on
from the same entry, so nothing appended meanwhile is missed. Every read also asks for the
stream's epoch over the same connection (a connection that redis-py re-opened by itself may
reach a Redis that restarted empty), and after an outage it checks for entries it never read
that were trimmed away. Another epoch or such a trim means a gap, which it fills from the store
before reading on: every web delivery of its users handed to the web channel since shortly
before the feed last answered, oldest first. Each socket remembers the ids it was sent lately
(`SentIds`), so what a catch-up, a connect's replay and the feed all carry reaches each socket
once.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import redis
import structlog
from flask_socketio import SocketIO
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from shared.ids import utcnow
from shared.live_feed import emitted_key, epoch_key, feed_key, position_key
from shared.runtime import Runtime
from shared.store_retry import retry_once_on_disconnect
from shared.tokens import BrowserIdentity
from ws_gateway import inbox
from ws_gateway.metrics import FEED_CATCH_UPS, FEED_OUTAGES, FEED_RECOVERED
from ws_gateway.slow_consumers import SlowConsumers

log = structlog.get_logger("ws_gateway.feed")

NAMESPACE = "/"
#: How long one read waits for new entries before it asks again (and so notices a silent Redis).
BLOCK_MS = 5000
#: Entries handled per read.
READ_COUNT = 500
#: How far before the feed's last answer a catch-up looks: the web worker marks a delivery sent
#: just after it appends it, on a clock that may be a little off this one.
CATCH_UP_MARGIN = timedelta(seconds=30)
MAX_BACKOFF_SECONDS = 5.0
#: The ids a socket remembers having been sent.
REMEMBERED_PER_SOCKET = 256
_ROOM_PREFIX = "user:"


class SentIds:
    """The notification ids each socket was sent lately, at most `limit` per socket."""

    def __init__(self, limit: int = REMEMBERED_PER_SOCKET) -> None:
        self.limit = limit
        # Plain dicts keep insertion order, in half an OrderedDict's memory: one per socket.
        self._by_sid: dict[str, dict[str, None]] = {}

    def first_time(self, sid: str, delivery_id: str) -> bool:
        """Remember that `sid` is being sent `delivery_id`; False if it was sent it already."""
        seen = self._by_sid.setdefault(sid, {})
        if delivery_id in seen:
            return False
        seen[delivery_id] = None
        if len(seen) > self.limit:
            del seen[next(iter(seen))]
        return True

    def forget(self, sid: str) -> None:
        self._by_sid.pop(sid, None)


def identity_of_room(room: str) -> BrowserIdentity | None:
    """The (app, user) of a user's room (`shared.notifications.user_room`); app ids hold no
    colon, user ids may."""
    if not room.startswith(_ROOM_PREFIX):
        return None
    app_id, _, user_id = room[len(_ROOM_PREFIX) :].partition(":")
    return BrowserIdentity(app_id, user_id) if app_id and user_id else None


def with_positions(
    runtime: Runtime, items: list[dict[str, Any]], *, leave_out_unappended: bool
) -> list[dict[str, Any]]:
    """`items` of the inbox's replay and catch-up queries as they are sent: each with its place
    in the live feed, which a browser needs in order to resume after it. The store has it once
    the web worker settled the delivery; one still being handed out gets it from the web
    channel's marker in Redis, and one not in the feed yet is left out if
    `leave_out_unappended` (the feed brings it, with its position, to every socket in the room
    by then). When Redis cannot say, they go as they are."""
    pending = [item["id"] for item in items if item[inbox.IN_FLIGHT] and item["position"] is None]
    positions: dict[str, str | None] = {}
    if pending:
        keys = [emitted_key(runtime.settings.queue_prefix, delivery_id) for delivery_id in pending]
        found = runtime.best_effort_redis.call("feed positions", lambda r: r.mget(keys), None)
        if found is not None:
            positions = {
                delivery_id: position.decode() if isinstance(position, bytes) else position
                for delivery_id, position in zip(pending, found, strict=True)
            }
    sent: list[dict[str, Any]] = []
    for item in items:
        in_flight = item.pop(inbox.IN_FLIGHT)
        if item["id"] in positions:
            item["position"] = positions[item["id"]]
            if item["position"] is None and in_flight and leave_out_unappended:
                continue
        sent.append(item)
    return sent


class LiveFeed:
    """Reads the live feed for one gateway process; see the module docstring."""

    def __init__(
        self,
        socketio: SocketIO,
        runtime: Runtime,
        sent: SentIds,
        slow_consumers: SlowConsumers,
    ) -> None:
        self.socketio = socketio
        self.runtime = runtime
        self.sent = sent
        self.slow_consumers = slow_consumers
        prefix = runtime.settings.queue_prefix
        self._key = feed_key(prefix)
        self._epoch_key = epoch_key(prefix)
        # Its own connection: a read blocks for up to BLOCK_MS, longer than other calls wait.
        # No retries inside redis-py: a read it retried on a reconnected Redis would hide that
        # Redis may have restarted, and this reader must look whenever the connection broke.
        self._redis = redis.Redis.from_url(
            runtime.settings.redis_url,
            decode_responses=True,
            socket_timeout=BLOCK_MS / 1000 + 5,
            socket_connect_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )
        self._epoch: str | None = None
        self._position: str | None = None
        self._last_answer: datetime = utcnow()
        self._in_doubt = True
        self._unavailable_since: datetime | None = None

    def start(self) -> None:
        """Take the stream's end as the place to read from, then read in the background."""
        try:
            self._epoch, self._position = self._current_epoch(), self._last_entry()
            self._in_doubt = False
        except RedisError as error:
            self._lost(error)
        self.socketio.start_background_task(self.run)

    def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                if self._in_doubt:
                    self._make_whole()
                epoch, entries = self._read()
                if epoch != self._epoch:
                    # Another Redis answered (redis-py reconnects by itself, unseen): what
                    # was read is from the new stream, which is read again from its start.
                    self._in_doubt = True
                    continue
            except RedisError as error:
                self._lost(error)
                self.socketio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            backoff = 0.1
            self._last_answer = utcnow()
            if self._unavailable_since is not None:
                log.info("gateway.feed_back", down_s=self._down_seconds())
                self._unavailable_since = None
            for entry_id, fields in entries:
                payload = json.loads(fields["data"])
                payload["position"] = entry_id
                self._deliver(fields["room"], fields["id"], payload)
                self._position = entry_id

    def _read(self) -> tuple[str | None, list[tuple[str, dict[str, str]]]]:
        """The stream's epoch and the entries after the position, waiting up to BLOCK_MS for
        the first. Both come over one connection, so the entries are of that epoch's stream."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._epoch_key)
        pipe.xread({self._key: self._position or "0-0"}, count=READ_COUNT, block=BLOCK_MS)
        epoch, answer = pipe.execute()
        return epoch, [entry for _stream, entries in answer or [] for entry in entries]

    def _lost(self, error: Exception) -> None:
        self._in_doubt = True
        if self._unavailable_since is None:
            self._unavailable_since = utcnow()
            FEED_OUTAGES.inc()
            log.warning("gateway.feed_unavailable", detail=str(error) or type(error).__name__)

    def _down_seconds(self) -> float:
        since = self._unavailable_since or utcnow()
        return round((utcnow() - since).total_seconds(), 3)

    def _make_whole(self) -> None:
        """After an outage or another epoch: read on if the stream is the same, else catch up
        from the store first (each socket is sent each id once, whichever way it comes)."""
        epoch = self._current_epoch()
        if self._position is None:
            # Never read (Redis was away at start): from the stream's end, after a catch-up.
            position = self._last_entry()
        elif epoch != self._epoch:
            position = "0-0"  # a new stream: all of it came after the one that was lost
        elif self._trimmed_unread():
            position = self._position  # the entries left after it are read on
        else:
            self._in_doubt = False
            return
        recovered = self._catch_up(self._last_answer - CATCH_UP_MARGIN)
        FEED_CATCH_UPS.inc()
        FEED_RECOVERED.inc(recovered)
        log.info("gateway.feed_caught_up", recovered=recovered, lost_stream=epoch != self._epoch)
        self._epoch, self._position, self._in_doubt = epoch, position, False

    def _current_epoch(self) -> str:
        """The stream's epoch, made now if Redis has none (it lost it, or never had one)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._epoch_key, utcnow().isoformat(), nx=True)
        pipe.get(self._epoch_key)
        _made, epoch = pipe.execute()
        return str(epoch)

    def _last_entry(self) -> str:
        newest = self._redis.xrevrange(self._key, count=1)
        return str(newest[0][0]) if newest else "0-0"

    def _trimmed_unread(self) -> bool:
        """Whether the stream dropped entries after the last one read (this gateway fell more
        than the stream's length behind)."""
        try:
            info = self._redis.xinfo_stream(self._key)
        except ResponseError:  # no such key: nothing was appended since Redis lost it
            return True
        deleted = str(info.get("max-deleted-entry-id") or "0-0")
        return position_key(deleted) > position_key(self._position or "0-0")

    def _catch_up(self, since: datetime) -> int:
        """Send the sockets of every room here what the store says was handed to the web
        channel for their user since `since`; how many notifications that sent."""
        sent = 0
        for room, identity in self._rooms():
            items = retry_once_on_disconnect(functools.partial(self._handed, identity, since))
            for item in items:
                sent += self._deliver(room, item["id"], item)
        return sent

    def _handed(self, identity: BrowserIdentity, since: datetime) -> list[dict[str, Any]]:
        with self.runtime.sessions() as session:
            items = inbox.handed_since(session, identity, since)
        # What Redis lost is not in the feed any more: nothing is left out.
        return with_positions(self.runtime, items, leave_out_unappended=False)

    def _rooms(self) -> Iterator[tuple[str, BrowserIdentity]]:
        rooms = self.socketio.server.manager.rooms.get(NAMESPACE, {})
        for room in list(rooms):
            if isinstance(room, str) and (identity := identity_of_room(room)) is not None:
                yield room, identity

    def _deliver(self, room: str, delivery_id: str, payload: dict[str, Any]) -> int:
        """Emit `payload` to each socket of `room` here that has not been sent it; to how many.
        A socket that stopped reading is cut off instead (it resumes from the store)."""
        sent = 0
        participants = list(self.socketio.server.manager.get_participants(NAMESPACE, room))
        for sid, eio_sid in participants:
            if self.slow_consumers.admit(eio_sid) and self.sent.first_time(sid, delivery_id):
                self.socketio.emit(
                    "notification", payload, to=sid, namespace=NAMESPACE, ignore_queue=True
                )
                sent += 1
        return sent
