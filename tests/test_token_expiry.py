"""One watch for every socket's token: each socket is looked at once its expiry has passed, and
watched again until a renewed token's expiry, or forgotten once it is gone or expelled."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask_socketio import SocketIO

from shared.ids import utcnow
from ws_gateway.expiry import TokenExpiry


def test_each_socket_is_looked_at_when_due_and_watched_again_only_if_renewed() -> None:
    now = utcnow()
    renewed_until = {"renewed": now + timedelta(minutes=5)}
    looked_at: list[str] = []

    def due(sid: str) -> datetime | None:
        looked_at.append(sid)
        return renewed_until.pop(sid, None)

    expiry = TokenExpiry(SocketIO(), due)
    expiry.watch("later", now + timedelta(minutes=1))
    expiry.watch("expired", now - timedelta(seconds=1))
    expiry.watch("renewed", now)

    assert expiry.check(now) == 2
    assert sorted(looked_at) == ["expired", "renewed"]
    assert len(expiry) == 2, "the renewed socket is watched again, the expired one forgotten"
    assert expiry.check(now + timedelta(seconds=30)) == 0
    assert expiry.check(now + timedelta(minutes=10)) == 2
    assert sorted(looked_at) == ["expired", "later", "renewed", "renewed"]
    assert len(expiry) == 0
