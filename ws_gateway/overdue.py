"""Settles, shortly after users connect, their web deliveries whose message has expired.

An expired notification is already left out of every replay, listing and count; what is left
is its delivery's status, `expired`, with its trace event. That is done here for everyone who
connected in the last moment in one statement, rather than in each connect's replay: a crowd
reconnecting after a gateway restart would otherwise cost the store one more write per socket.
"""

from __future__ import annotations

import structlog
from flask_socketio import SocketIO
from sqlalchemy.exc import SQLAlchemyError

from shared.runtime import Runtime
from shared.tokens import BrowserIdentity
from ws_gateway import inbox

log = structlog.get_logger("ws_gateway.overdue")

#: How often the users who connected meanwhile are looked at.
SETTLE_SECONDS = 0.5
#: The most users one statement covers.
BATCH = 500


class OverdueDeliveries:
    """Collects the users who connected and settles their overdue deliveries in batches."""

    def __init__(self, socketio: SocketIO, runtime: Runtime) -> None:
        self.socketio = socketio
        self.runtime = runtime
        self._pending: set[BrowserIdentity] = set()

    def note(self, identity: BrowserIdentity) -> None:
        """The user connected: settle theirs with the next batch."""
        self._pending.add(identity)

    def run(self) -> None:
        while True:
            self.socketio.sleep(SETTLE_SECONDS)
            while self._pending and self.settle() >= 0:
                continue

    def settle(self) -> int:
        """Settle one batch of the users noted; how many deliveries ended `expired` (-1 when the
        store failed: the users stay noted and are tried again)."""
        batch = [self._pending.pop() for _ in range(min(BATCH, len(self._pending)))]
        try:
            with self.runtime.sessions() as session, session.begin():
                expired = inbox.expire_overdue(session, batch)
        except SQLAlchemyError as error:
            self._pending.update(batch)
            log.warning("gateway.expiry_failed", users=len(batch), detail=type(error).__name__)
            return -1
        if expired:
            log.info("gateway.expired", deliveries=len(expired), users=len(batch))
        return len(expired)
