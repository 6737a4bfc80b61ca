"""The Socket.IO side of the inbox: connect/auth, the user's room, replay, `ack` and `read`.

A socket proves who it is once, on connect, with a browser token; the (app, user) it names is
kept in the socket's session and scopes everything the socket may see or change afterwards.
The replay runs right after the CONNECT packet has gone out (see `ConnectAwareRedisManager`),
so the client has joined the namespace before the first `notification` reaches it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import socketio
import structlog
from flask import request
from flask_socketio import ConnectionRefusedError, SocketIO, join_room
from marshmallow import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from shared.notifications import user_room
from shared.runtime import Runtime
from shared.tokens import BrowserIdentity, InvalidToken
from ws_gateway import inbox
from ws_gateway.auth import identify, socket_token
from ws_gateway.metrics import (
    ACKNOWLEDGED,
    CONNECTED_SOCKETS,
    CONNECTS,
    READ,
    REJECTED_EVENTS,
    REPLAYED,
)
from ws_gateway.schemas import AckSchema, ReadSchema

NAMESPACE = "/"
UNAUTHORIZED = "unauthorized"
_IDENTITY = "identity"

log = structlog.get_logger("ws_gateway.sockets")


class ConnectAwareRedisManager(socketio.RedisManager):
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

    def __init__(self, socketio: SocketIO, runtime: Runtime) -> None:
        self.socketio = socketio
        self.runtime = runtime

    def register(self, manager: ConnectAwareRedisManager) -> None:
        """Attach the handlers (call before `SocketIO.init_app`)."""
        self.socketio.on_event("connect", self.on_connect, namespace=NAMESPACE)
        self.socketio.on_event("disconnect", self.on_disconnect, namespace=NAMESPACE)
        self.socketio.on_event("ack", self.on_ack, namespace=NAMESPACE)
        self.socketio.on_event("read", self.on_read, namespace=NAMESPACE)
        self.socketio.on_error_default(self.on_error)
        manager.on_connected = self.after_connected

    # -- connection -------------------------------------------------------------------------

    def on_connect(self, auth: Any = None) -> None:
        """Accept a socket with a valid token and put it in its user's room; refuse the rest."""
        try:
            identity = identify(self.runtime.settings.secret_key, socket_token(auth, request.args))
        except InvalidToken as error:
            CONNECTS.labels(outcome="refused").inc()
            log.info("gateway.connect_refused", reason=str(error))
            raise ConnectionRefusedError(UNAUTHORIZED) from None
        sid: str = request.sid  # type: ignore[attr-defined]
        self.socketio.server.save_session(sid, {_IDENTITY: identity}, namespace=NAMESPACE)
        join_room(user_room(identity.app_id, identity.user_id), sid=sid, namespace=NAMESPACE)
        CONNECTS.labels(outcome="accepted").inc()
        CONNECTED_SOCKETS.inc()
        log.info("gateway.connected", app=identity.app_id, user_id=identity.user_id, sid=sid)

    def after_connected(self, sid: str, namespace: str) -> None:
        """Replay what the user has not acknowledged, oldest first, then the unread count."""
        identity = self._identity(sid) if namespace == NAMESPACE else None
        if identity is None:
            return
        try:
            with self.runtime.sessions() as session:
                items = inbox.unacknowledged(session, identity)
                count = inbox.unread_count(session, identity)
        except Exception:  # never let the replay break the connection itself
            log.exception("gateway.replay_failed", app=identity.app_id, sid=sid)
            return
        for item in items:
            self.socketio.emit("notification", item, to=sid, namespace=NAMESPACE, ignore_queue=True)
        self.socketio.emit(
            "unread_count", {"count": count}, to=sid, namespace=NAMESPACE, ignore_queue=True
        )
        REPLAYED.inc(len(items))
        log.info("gateway.replayed", app=identity.app_id, sid=sid, replayed=len(items))

    def on_disconnect(self, *_reason: Any) -> None:
        """Forget the socket (the room membership goes with it)."""
        sid: str = request.sid  # type: ignore[attr-defined]
        if self._identity(sid) is not None:
            CONNECTED_SOCKETS.dec()

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
        try:
            with self.runtime.sessions() as session, session.begin():
                changed = inbox.acknowledge(session, identity, body["ids"])
                count = inbox.unread_count(session, identity) if changed else None
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

    def on_error(self, error: Exception) -> dict[str, Any]:
        """Any unexpected error in a handler: log it and answer with an error ack."""
        log.error("gateway.handler_error", error=type(error).__name__, exc_info=error)
        return _error("internal")

    # -- helpers ----------------------------------------------------------------------------

    def push_unread_count(self, identity: BrowserIdentity, count: int) -> None:
        """Send `unread_count` to every socket of the user, on every gateway process."""
        push_unread_count(self.socketio, identity, count)

    def _identity(self, sid: str) -> BrowserIdentity | None:
        try:
            saved = self.socketio.server.get_session(sid, namespace=NAMESPACE)
        except KeyError:
            return None
        identity = saved.get(_IDENTITY) if isinstance(saved, dict) else None
        return identity if isinstance(identity, BrowserIdentity) else None


def read_and_count(
    runtime: Runtime, identity: BrowserIdentity, ids: Sequence[str] | None, via: str
) -> tuple[list[str], int]:
    """Mark read (all unread when `ids` is None) and count what stays unread, in one commit."""
    with runtime.sessions() as session, session.begin():
        changed = inbox.mark_read(session, identity, ids, via=via)
        count = inbox.unread_count(session, identity)
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
