"""The Socket.IO side of the inbox: connect/auth, the user's room, replay, `ack`, `read`, `renew`.

A socket proves who it is on connect with a browser token; the token (its (app, user) and its
expiry) is kept in the socket's session and scopes everything the socket may see or change
afterwards. A socket lives only as long as its token: when the token expires, the socket gets
`unauthorized` and is disconnected, and an event that arrives on a socket whose token has
expired is refused the same way. Before that, the client may `renew` with a fresh token for the
same user. A client that reconnects may say `since`, the live feed position of the last
notification it saw: its replay is then what it missed since, in the feed's order, instead of
everything unacknowledged. The replay runs right after the CONNECT packet has gone out (see
`ConnectAwareRedisManager`), so the client has joined the namespace before the first
`notification` reaches it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import socketio
import structlog
from flask import request
from flask_socketio import ConnectionRefusedError, SocketIO, join_room
from marshmallow import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from shared.ids import utcnow
from shared.notifications import user_room
from shared.runtime import Runtime
from shared.store_retry import retry_once_on_disconnect
from shared.tokens import BrowserIdentity, BrowserToken, InvalidToken
from ws_gateway import inbox
from ws_gateway.auth import read_token, socket_since, socket_token
from ws_gateway.expiry import TokenExpiry
from ws_gateway.feed import SentIds, with_positions
from ws_gateway.metrics import (
    ACKNOWLEDGED,
    CONNECTED_SOCKETS,
    CONNECTS,
    EXPIRED_SOCKETS,
    READ,
    REJECTED_EVENTS,
    RENEWALS,
    REPLAY_FAILURES,
    REPLAY_WAIT,
    REPLAYED,
)
from ws_gateway.overdue import OverdueDeliveries
from ws_gateway.room_index import IndexedRooms
from ws_gateway.schemas import AckSchema, ReadSchema, RenewSchema
from ws_gateway.slow_consumers import SlowConsumers

NAMESPACE = "/"
UNAUTHORIZED = "unauthorized"
TOKEN_EXPIRED = "token expired"
REPLAY_FAILED = "replay failed, reconnect to retry"
#: The key of the socket's `BrowserToken` in its Socket.IO session.
TOKEN_KEY = "token"
#: The key of the feed position it reconnected after (`since`), if it said one.
SINCE_KEY = "since"
INVALID_SINCE = "invalid since"
#: Replays that use the store at once; the others wait their turn, so that a crowd reconnecting
#: after a gateway restart neither runs this process out of store connections (its pool holds
#: 5) nor keeps acks and the REST routes waiting behind it.
REPLAYS_AT_ONCE = 4

log = structlog.get_logger("ws_gateway.sockets")


class ConnectAwareRedisManager(IndexedRooms, socketio.RedisManager):
    """python-socketio's Redis manager that reports each client once it is fully connected.

    python-socketio sends the CONNECT packet and then marks the client connected here; events
    emitted from inside the connect handler would instead reach the client before CONNECT.
    """

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(url=url, channel=channel)
        self.on_connected: Callable[[str, str], None] | None = None

    def connect(self, sid: str, namespace: str) -> str:
        connected: str = super().connect(sid, namespace)
        if self.on_connected is not None:
            self.on_connected(connected, namespace)
        return connected


def _body(args: tuple[Any, ...]) -> Any:
    """The one argument an event must carry; anything else fails validation."""
    return args[0] if len(args) == 1 else None


def _error(error: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": error, **extra}


class InboxSockets:
    """Registers the inbox's Socket.IO handlers on one `SocketIO` and serves its events."""

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
        # Made here, in the serving process: under gevent, the cooperative semaphore.
        self._replay_turns = threading.BoundedSemaphore(REPLAYS_AT_ONCE)
        #: Expels each socket when its token expires (its task runs once the app serves).
        self.expiry = TokenExpiry(socketio, self.expiry_due)
        #: Settles the overdue deliveries of the users who connect (its task likewise).
        self.overdue = OverdueDeliveries(socketio, runtime)

    def register(self, manager: ConnectAwareRedisManager) -> None:
        """Attach the handlers (call before `SocketIO.init_app`)."""
        self.socketio.on_event("connect", self.on_connect, namespace=NAMESPACE)
        self.socketio.on_event("disconnect", self.on_disconnect, namespace=NAMESPACE)
        self.socketio.on_event("ack", self.on_ack, namespace=NAMESPACE)
        self.socketio.on_event("read", self.on_read, namespace=NAMESPACE)
        self.socketio.on_event("renew", self.on_renew, namespace=NAMESPACE)
        self.socketio.on_error_default(self.on_error)
        manager.on_connected = self.after_connected

    # -- connection -------------------------------------------------------------------------

    def on_connect(self, auth: Any = None) -> None:
        """Accept a socket with a valid token and put it in its user's room; refuse the rest."""
        try:
            token = read_token(self.runtime.settings.secret_key, socket_token(auth, request.args))
        except InvalidToken as error:
            CONNECTS.labels(outcome="refused").inc()
            log.info("gateway.connect_refused", reason=str(error))
            raise ConnectionRefusedError(UNAUTHORIZED) from None
        try:
            since = socket_since(auth, request.args)
        except ValueError as error:
            CONNECTS.labels(outcome="refused").inc()
            log.info("gateway.connect_refused", reason=str(error))
            raise ConnectionRefusedError(INVALID_SINCE) from None
        identity = token.identity
        sid: str = request.sid  # type: ignore[attr-defined]
        self._save_token(sid, token, since)
        join_room(user_room(identity.app_id, identity.user_id), sid=sid, namespace=NAMESPACE)
        CONNECTS.labels(outcome="accepted").inc()
        CONNECTED_SOCKETS.inc()
        log.info("gateway.connected", app=identity.app_id, user_id=identity.user_id, sid=sid)

    def after_connected(self, sid: str, namespace: str) -> None:
        """Watch the token's expiry; replay, when its turn comes (`REPLAYS_AT_ONCE`), what the
        user has not acknowledged, oldest first (one page), or with `since` everything missed,
        a page at a time once the socket has taken the last; then the unread count. A replay
        that fails says so, so the client can reconnect."""
        token = self._saved_token(sid) if namespace == NAMESPACE else None
        if token is None:
            return
        identity = token.identity
        self.expiry.watch(sid, token.expires_at)
        self.overdue.note(identity)
        since = self._saved_since(sid)
        replayed, after_id = 0, ""
        while True:
            page = self._replay_page(sid, identity, since, after_id)
            if page is None:
                return
            items, count, next_after = page
            replayed += self._send_replayed(sid, items)
            if next_after is None:
                break
            if not self.slow_consumers.drained(sid):
                # Gone, or about to be cut off for not reading (`SlowConsumers`): no more.
                log.info("gateway.replay_stopped", app=identity.app_id, sid=sid, replayed=replayed)
                REPLAYED.inc(replayed)
                return
            after_id = next_after
        self.socketio.emit(
            "unread_count", {"count": count}, to=sid, namespace=NAMESPACE, ignore_queue=True
        )
        REPLAYED.inc(replayed)
        log.info("gateway.replayed", app=identity.app_id, sid=sid, replayed=replayed)

    def _replay_page(
        self, sid: str, identity: BrowserIdentity, since: str | None, after_id: str
    ) -> tuple[list[dict[str, Any]], int | None, str | None] | None:
        """One page of the replay, the unread count with the last page (None with the others:
        only the last one's is sent), and where the next page starts; None if the socket left
        meanwhile or the store failed (the client is told)."""

        def replay() -> tuple[list[dict[str, Any]], int | None, str | None]:
            with self.runtime.sessions() as session, session.begin():
                if since is None:
                    items, next_after = inbox.unacknowledged(session, identity), None
                else:
                    page = inbox.missed_since(session, identity, since, after_id=after_id)
                    items, next_after = page.items, page.next_after
                if next_after is not None:
                    return items, None, next_after
                return items, inbox.unread_count(session, identity), None

        try:
            waiting_since = time.monotonic()
            with self._replay_turns:
                REPLAY_WAIT.observe(time.monotonic() - waiting_since)
                if self._saved_token(sid) is None:
                    return None  # gone while it waited
                return retry_once_on_disconnect(replay)
        except Exception:  # never let the replay break the connection itself
            log.exception("gateway.replay_failed", app=identity.app_id, sid=sid)
            REPLAY_FAILURES.inc()
            self.socketio.emit(
                "error", {"message": REPLAY_FAILED}, to=sid, namespace=NAMESPACE, ignore_queue=True
            )
            return None

    def _send_replayed(self, sid: str, items: list[dict[str, Any]]) -> int:
        """Emit a page of the replay; how many it sent."""
        # The live feed carries those being handed out now too; each reaches the socket once,
        # with its position, which the browser needs to resume after it.
        items = with_positions(self.runtime, items, leave_out_unappended=True)
        items = [item for item in items if self.sent.first_time(sid, item["id"])]
        for item in items:
            self.socketio.emit("notification", item, to=sid, namespace=NAMESPACE, ignore_queue=True)
        return len(items)

    def on_disconnect(self, *_reason: Any) -> None:
        """Forget the socket (the room membership goes with it)."""
        sid: str = request.sid  # type: ignore[attr-defined]
        self.sent.forget(sid)
        if self._saved_token(sid) is not None:
            CONNECTED_SOCKETS.dec()

    def expiry_due(self, sid: str) -> datetime | None:
        """`TokenExpiry`'s callback: expel the socket if its token expired; else the expiry of
        its renewed token (None once the socket is gone)."""
        token = self._saved_token(sid)
        if token is None:
            return None
        if token.expired(utcnow()):
            self._expel(sid, token)
            return None
        return token.expires_at

    # -- events -----------------------------------------------------------------------------

    def on_ack(self, *args: Any) -> dict[str, Any]:
        """`ack {"ids": [...]}`: the browser received these; they are not replayed again."""
        identity = self._identity(request.sid)  # type: ignore[attr-defined]
        if identity is None:
            return _error(UNAUTHORIZED)
        try:
            body = AckSchema().load(_body(args))
        except ValidationError as error:
            REJECTED_EVENTS.labels(event="ack").inc()
            return _error("invalid", errors=error.messages)

        def acknowledge() -> tuple[list[str], int | None]:
            with self.runtime.sessions() as session, session.begin():
                changed = inbox.acknowledge(session, identity, body["ids"])
                return changed, inbox.unread_count(session, identity) if changed else None

        try:
            changed, count = retry_once_on_disconnect(acknowledge)
        except SQLAlchemyError:
            log.exception("gateway.ack_failed", app=identity.app_id)
            return _error("unavailable")
        ACKNOWLEDGED.inc(len(changed))
        if count is not None:
            # New items arrived since the last count: keep every badge of the user exact.
            self.push_unread_count(identity, count)
        return {"ok": True, "updated": len(changed)}

    def on_read(self, *args: Any) -> dict[str, Any]:
        """`read {"ids": [...]}` or `{"all": true}`: mark read, push the count to every socket."""
        identity = self._identity(request.sid)  # type: ignore[attr-defined]
        if identity is None:
            return _error(UNAUTHORIZED)
        try:
            body = ReadSchema().load(_body(args))
        except ValidationError as error:
            REJECTED_EVENTS.labels(event="read").inc()
            return _error("invalid", errors=error.messages)
        ids: Sequence[str] | None = body.get("ids")
        try:
            changed, count = read_and_count(self.runtime, identity, ids, via="socket")
        except SQLAlchemyError:
            log.exception("gateway.read_failed", app=identity.app_id)
            return _error("unavailable")
        self.push_unread_count(identity, count)
        return {"ok": True, "updated": len(changed), "unread_count": count}

    def on_renew(self, *args: Any) -> dict[str, Any]:
        """`renew {"token": JWT}`: a fresh token for the same user keeps the socket connected
        past the current token's expiry; answers the new `expires_at`."""
        sid: str = request.sid  # type: ignore[attr-defined]
        current = self._live_token(sid)
        if current is None:
            return _error(UNAUTHORIZED)
        try:
            body = RenewSchema().load(_body(args))
        except ValidationError as error:
            REJECTED_EVENTS.labels(event="renew").inc()
            return _error("invalid", errors=error.messages)
        try:
            fresh = read_token(self.runtime.settings.secret_key, body["token"])
        except InvalidToken as error:
            RENEWALS.labels(outcome="refused").inc()
            log.info("gateway.renew_refused", sid=sid, reason=str(error))
            return _error(UNAUTHORIZED, detail="The token is not valid or has expired.")
        if fresh.identity != current.identity:
            RENEWALS.labels(outcome="refused").inc()
            log.info("gateway.renew_refused", sid=sid, reason="another app or user")
            return _error(UNAUTHORIZED, detail="The token is for another app or user.")
        # Both tokens are valid for this user: the socket holds until the later expiry (the
        # expiry watch, due at the current one, then watches until the new one).
        renewed = max(current, fresh, key=lambda token: token.expires_at)
        self._save_token(sid, renewed)
        RENEWALS.labels(outcome="renewed").inc()
        return {"ok": True, "expires_at": renewed.expires_at.isoformat()}

    def on_error(self, error: Exception) -> dict[str, Any]:
        """Any unexpected error in a handler: log it and answer with an error ack."""
        log.error("gateway.handler_error", error=type(error).__name__, exc_info=error)
        return _error("internal")

    # -- helpers ----------------------------------------------------------------------------

    def push_unread_count(self, identity: BrowserIdentity, count: int) -> None:
        """Send `unread_count` to every socket of the user, on every gateway process."""
        push_unread_count(self.socketio, identity, count)

    def _identity(self, sid: str) -> BrowserIdentity | None:
        """Who the socket speaks for, if its token still holds (else it is expelled now)."""
        token = self._live_token(sid)
        return token.identity if token is not None else None

    def _live_token(self, sid: str) -> BrowserToken | None:
        """The socket's token if it has not expired; an expired one's socket is expelled."""
        token = self._saved_token(sid)
        if token is not None and token.expired(utcnow()):
            self._expel(sid, token)
            return None
        return token

    def _saved_token(self, sid: str) -> BrowserToken | None:
        """The token the socket connected (or last renewed) with; None once it is gone."""
        try:
            saved = self.socketio.server.get_session(sid, namespace=NAMESPACE)
        except KeyError:
            return None
        token = saved.get(TOKEN_KEY) if isinstance(saved, dict) else None
        return token if isinstance(token, BrowserToken) else None

    def _save_token(self, sid: str, token: BrowserToken, since: str | None = None) -> None:
        session = {
            TOKEN_KEY: token,
            SINCE_KEY: since if since is not None else self._saved_since(sid),
        }
        self.socketio.server.save_session(sid, session, namespace=NAMESPACE)

    def _saved_since(self, sid: str) -> str | None:
        """Where the socket said, on connect, that it had stopped."""
        try:
            saved = self.socketio.server.get_session(sid, namespace=NAMESPACE)
        except KeyError:
            return None
        since = saved.get(SINCE_KEY) if isinstance(saved, dict) else None
        return since if isinstance(since, str) else None

    def _expel(self, sid: str, token: BrowserToken) -> None:
        """Tell the client its token expired, then disconnect it (this process holds it)."""
        if not self.socketio.server.manager.is_connected(sid, NAMESPACE):
            return
        self.socketio.emit(
            UNAUTHORIZED, {"message": TOKEN_EXPIRED}, to=sid, namespace=NAMESPACE, ignore_queue=True
        )
        self.socketio.server.disconnect(sid, namespace=NAMESPACE, ignore_queue=True)
        EXPIRED_SOCKETS.inc()
        log.info("gateway.token_expired", app=token.identity.app_id, sid=sid)


def read_and_count(
    runtime: Runtime, identity: BrowserIdentity, ids: Sequence[str] | None, via: str
) -> tuple[list[str], int]:
    """Mark read (all unread when `ids` is None) and count what stays unread, in one commit."""

    def read() -> tuple[list[str], int]:
        with runtime.sessions() as session, session.begin():
            changed = inbox.mark_read(session, identity, ids, via=via)
            return changed, inbox.unread_count(session, identity)

    changed, count = retry_once_on_disconnect(read)
    READ.labels(via=via).inc(len(changed))
    return changed, count


def push_unread_count(socketio: SocketIO, identity: BrowserIdentity, count: int) -> None:
    """Emit `unread_count` to the user's room through the message queue."""
    socketio.emit(
        "unread_count",
        {"count": count},
        to=user_room(identity.app_id, identity.user_id),
        namespace=NAMESPACE,
    )
