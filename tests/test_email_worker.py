"""A real email worker process killed in the middle of a stream of mails, then replaced.

The worker (`omnipush serve worker --channel email`) sends 60 mails to a local SMTP server that
takes a moment over each. It is SIGKILLed once a third have arrived: some of its claimed
deliveries were accepted by the server and never recorded, the rest were never sent. A new
worker takes the stale claims over: the mails the server accepted are found by their markers
and not sent again, the others are sent. Every mail arrives, at most one of them twice (the one
the server may have accepted in the instant between its 250 and the marker, see
`channels.email`).

Beside it, the same runtime on a thread: a user's mail goes to the address the store holds.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import func, insert, select

from channels.email import EmailChannel
from channels.registry import channel_names
from channels.worker import ChannelWorker, build_channel_context
from shared.amqp.link import AmqpLink, Outgoing
from shared.amqp.topology import channel_key
from shared.ids import new_id, utcnow
from shared.models import Delivery, Event, Message, User
from shared.payloads import DeliveryPayload, encode
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import AMQP_URL, isolated_settings, new_tenant, service_env
from tests.rigs.email import email_settings
from tests.smtp_server import SmtpServer
from tests.stack import Service, wait_until

MAILS = 60
#: Seconds the server takes over each mail: slow enough to kill the worker mid-stream.
DATA_DELAY = 0.03


@pytest.fixture
def email_runtime() -> Iterator[Runtime]:
    with isolated_settings() as settings:
        built = Runtime.build(settings, channels=channel_names())
        yield built
        built.close()


def queue_mails(
    runtime: Runtime, recipients: list[tuple[str | None, str | None]], app_id: str | None = None
) -> list[str]:
    """One dispatched message to `recipients` (each a user id or a bare address), its
    deliveries published for the email worker; their ids."""
    app_id = app_id or new_tenant(runtime).app_id
    now = utcnow()
    message_id = new_id("msg")
    ids = [new_id("dlv") for _ in recipients]
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(Message),
            {
                "id": message_id,
                "app_id": app_id,
                "status": "dispatched",
                "recipients": [{"user_id": u} if u else {"email": a} for u, a in recipients],
                "channels": ["email"],
                "content": {"title": "Stream", "body": "One of many"},
                "category": "notification",
                "priority": "normal",
                "created_at": now,
                "updated_at": now,
            },
        )
        connection.execute(
            insert(Delivery),
            [
                {
                    "id": delivery_id,
                    "message_id": message_id,
                    "app_id": app_id,
                    "recipient": f"user:{user_id}" if user_id else f"email:{address}",
                    "user_id": user_id,
                    "address": address,
                    "channel": "email",
                    "status": "queued",
                    "created_at": now,
                    "updated_at": now,
                }
                for delivery_id, (user_id, address) in zip(ids, recipients, strict=True)
            ],
        )
    payloads = [
        {"delivery_id": i, "message_id": message_id, "app_id": app_id, "channel": "email"}
        for i in ids
    ]
    link = AmqpLink(AMQP_URL, runtime.topology)
    link.start()
    try:
        assert link.wait_ready(10), "RabbitMQ did not answer"
        outgoing = [Outgoing(channel_key("email"), encode(DeliveryPayload(), p)) for p in payloads]
        for future in link.publish_batch(outgoing):
            future.result(10)
    finally:
        link.close()
    return ids


def email_worker(settings: Settings, server: SmtpServer) -> Service:
    env = service_env(settings)
    env.update(OMNIPUSH_SMTP_URL=server.url(), OMNIPUSH_SMTP_FROM="Shop <noreply@shop.example>")
    service = Service(["serve", "worker", "--channel", "email"], env).start()
    service.wait_for_log("amqp.ready", 60)
    return service


def statuses(runtime: Runtime, ids: list[str]) -> Counter[str]:
    with runtime.engine.connect() as connection:
        return Counter(connection.scalars(select(Delivery.status).where(Delivery.id.in_(ids))))


def test_a_worker_killed_mid_stream_loses_no_mail_and_sends_at_most_one_twice(
    email_runtime: Runtime,
) -> None:
    runtime = email_runtime
    with SmtpServer(data_delay=DATA_DELAY) as server:
        first = email_worker(runtime.settings, server)
        try:
            addresses = [f"reader{i}@example.com" for i in range(MAILS)]
            ids = queue_mails(runtime, [(None, address) for address in addresses])
            wait_until(lambda: len(server.received) >= MAILS // 3, 30, "a third of the mails")
            first.kill()
        finally:
            first.stop()
        arrived_before = len(server.received)
        assert arrived_before < MAILS, "the worker finished before it was killed"
        second = email_worker(runtime.settings, server)
        try:
            wait_until(
                lambda: statuses(runtime, ids)["sent"] == MAILS,
                60,
                "every delivery sent",
                interval=0.2,
            )
        finally:
            second.stop()
    copies = Counter(str(mail.message["Message-ID"]) for mail in server.received)
    assert set(copies) == {f"<{i}@shop.example>" for i in ids}
    assert sum(n - 1 for n in copies.values()) <= 1, copies.most_common(3)
    with runtime.engine.connect() as connection:
        sent_events = connection.scalar(
            select(func.count()).where(Event.delivery_id.in_(ids), Event.stage == "sent")
        )
    # Each delivery recorded sent once, whichever worker sent it or found it accepted.
    assert sent_events == MAILS


def test_a_users_mail_goes_to_the_address_the_store_holds_and_one_without_fails_unsent(
    email_runtime: Runtime,
) -> None:
    runtime = email_runtime
    tenant = new_tenant(runtime)
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(User),
            [
                {"app_id": tenant.app_id, "user_id": "ann", "email": "ann@example.com"},
                {"app_id": tenant.app_id, "user_id": "nobody", "email": None},
            ],
        )
    with SmtpServer() as server:
        settings = email_settings(runtime.settings, server)
        context = build_channel_context(settings, runtime.redis, runtime.best_effort_redis, "email")
        channel = EmailChannel(context)
        link = AmqpLink(
            AMQP_URL, runtime.topology, consume_queues=runtime.topology.channel_queues("email")
        )
        worker = ChannelWorker(runtime, link, channel)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            ann, nobody = queue_mails(runtime, [("ann", None), ("nobody", None)], tenant.app_id)
            wait_until(
                lambda: statuses(runtime, [ann, nobody]) == Counter(sent=1, failed=1),
                20,
                "one sent, one failed",
            )
        finally:
            worker.stop()
            thread.join(20)
            channel.close()
    (mail,) = server.received
    assert mail.recipients == ("ann@example.com",)
    assert mail.message["Message-ID"] == f"<{ann}@shop.example>"
