"""The relay and the dispatcher lock the same messages in one order, so they never deadlock.

The relay marks a batch `queued` after the broker confirmed it, by when the dispatcher may be
dispatching those messages already, each batch's rows locked in id order. A relay that locked
them in another order (PostgreSQL's scan order) could hold one the dispatcher waits for while
it waits for one the dispatcher holds: PostgreSQL then broke the deadlock after a second, and
the messages behind it waited about two.
"""

from __future__ import annotations

from sqlalchemy import insert, select, text

from dispatcher.expansion import MESSAGE_COLUMNS
from shared.amqp.topology import DISPATCH_KEY
from shared.ids import new_id, utcnow
from shared.models import Message, OutboxEntry
from shared.runtime import Runtime
from tests.conftest import new_tenant
from tests.queued import running_relay
from tests.stack import wait_until

_LOCK = select(*MESSAGE_COLUMNS).where(Message.id == text(":id")).with_for_update()

_WAITING_ON_LOCKS = text(
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


def _waiting_on_locks(runtime: Runtime) -> int:
    # A connection of its own each time: a transaction keeps its first view of the statistics.
    with runtime.engine.connect() as connection:
        return int(connection.execute(_WAITING_ON_LOCKS).scalar_one())


def _statuses(runtime: Runtime, ids: list[str]) -> list[str]:
    with runtime.engine.connect() as connection:
        rows = connection.execute(
            select(Message.id, Message.status).where(Message.id.in_(ids))
        ).all()
    return [status for _id, status in sorted(rows)]


def test_the_relay_waits_for_a_message_the_dispatcher_holds_without_holding_the_next(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    app_id = new_tenant(runtime).app_id
    first, second = sorted(new_id("msg") for _ in range(2))
    now = utcnow()
    with runtime.engine.begin() as connection:
        # The later id first: a scan in table order meets it before the earlier one.
        for message_id in (second, first):
            connection.execute(
                insert(Message),
                {
                    "id": message_id,
                    "app_id": app_id,
                    "status": "accepted",
                    "recipients": [{"user_id": "ada"}],
                    "channels": ["web"],
                    "content": {"title": "t"},
                    "created_at": now,
                    "updated_at": now,
                },
            )
            connection.execute(
                insert(OutboxEntry),
                {
                    "message_id": message_id,
                    "routing_key": DISPATCH_KEY,
                    "payload": {"message_id": message_id, "app_id": app_id},
                },
            )
    with runtime.engine.connect() as dispatcher:
        dispatching = dispatcher.begin()
        dispatcher.execute(_LOCK, {"id": first})
        with running_relay(runtime):
            wait_until(
                lambda: _waiting_on_locks(runtime) == 1,
                20,
                "the relay to wait for the message the dispatcher holds",
            )
            # The dispatcher's next lock in id order is free: the relay holds nothing after
            # the one it waits for (NOWAIT fails at once if it does).
            dispatcher.execute(_LOCK.with_for_update(nowait=True), {"id": second})
            dispatching.commit()
            wait_until(
                lambda: _statuses(runtime, [first, second]) == ["queued", "queued"],
                20,
                "the relay to mark both queued",
            )
