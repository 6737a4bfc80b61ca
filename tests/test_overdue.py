"""The deliveries of users who connected, whose message has expired, end `expired` together:
one statement for a whole batch of users, each with its trace event."""

from __future__ import annotations

from datetime import timedelta

from flask_socketio import SocketIO
from sqlalchemy import update

from shared.ids import utcnow
from shared.models import Message
from shared.runtime import Runtime
from shared.tokens import BrowserIdentity
from tests.conftest import new_tenant
from tests.gateway_support import add_items, events_of, new_user, statuses
from ws_gateway.overdue import OverdueDeliveries


def test_the_users_who_connected_have_their_overdue_deliveries_settled_in_one_batch(
    inprocess_runtime: Runtime,
) -> None:
    runtime = inprocess_runtime
    app_id = new_tenant(runtime).app_id
    users = [new_user() for _ in range(3)]
    overdue = [add_items(runtime, app_id, user)[0] for user in users[:2]]
    current = add_items(runtime, app_id, users[2])[0]
    with runtime.sessions() as session, session.begin():
        session.execute(
            update(Message)
            .where(Message.id.in_([item.message_id for item in overdue]))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )

    settler = OverdueDeliveries(SocketIO(), runtime)
    for user in users:
        settler.note(BrowserIdentity(app_id, user))
    assert settler.settle() == 2
    assert statuses(runtime, [*overdue, current]) == {
        overdue[0].delivery_id: "expired",
        overdue[1].delivery_id: "expired",
        current.delivery_id: "sent",
    }
    assert all(events_of(runtime, item)[-1] == "expired" for item in overdue)
    assert settler.settle() == 0, "each user is settled once per connect"
