"""A gateway process, browsers that record what it sends them, and inbox rows for its tests.

Messages and deliveries are written straight into the store, and live notifications are
published exactly as the web worker does (`WebChannel.send`), so tests need only the gateway
process. Browsers are real python-socketio clients on the websocket transport.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import socketio
from sqlalchemy import insert, select, update

from channels.base import OutboundDelivery, Outcome
from channels.web import WebChannel
from shared.ids import new_id, utcnow
from shared.models import Delivery, Event, Message
from shared.notifications import socketio_channel, user_room
from shared.runtime import Runtime
from shared.settings import Settings
from shared.tokens import mint_browser_token
from tests.channel_harness import context_for
from tests.conftest import service_env
from tests.stack import Service, free_port, wait_http_ok, wait_until

TIMEOUT = 10.0


# -- the gateway process ----------------------------------------------------------------------


@dataclass
class Gateway:
    """One running gateway process and how to reach it."""

    settings: Settings
    service: Service

    @property
    def url(self) -> str:
        return f"http://{self.settings.gateway_bind}"


@contextmanager
def running_gateway(settings: Settings, bind: str | None = None) -> Iterator[Gateway]:
    """`omnipush serve gateway` for `settings`, on `bind` (default: a port of its own),
    subscribed and ready."""
    own = settings.with_overrides(gateway_bind=bind or f"127.0.0.1:{free_port()}")
    service = Service(args=["serve", "gateway"], env=service_env(own)).start()
    running = Gateway(settings=own, service=service)
    try:
        wait_http_ok(f"{running.url}/healthz")
        _wait_until_subscribed(running)
        yield running
    finally:
        service.stop()


def _wait_until_subscribed(gateway: Gateway) -> None:
    """Poll through the Redis message queue until the gateway delivers to a connected socket."""
    settings = gateway.settings
    app_id, user_id = "app_probe", f"probe-{uuid.uuid4().hex[:8]}"
    emitter = socketio.RedisManager(
        settings.redis_url, channel=socketio_channel(settings.queue_prefix), write_only=True
    )
    arrived = threading.Event()
    client = socketio.Client(reconnection=False)
    client.on("probe", lambda _data: arrived.set())
    client.connect(
        gateway.url,
        auth={"token": token_for(settings, app_id, user_id)},
        transports=["websocket"],
        wait_timeout=TIMEOUT,
    )
    try:

        def delivered() -> bool:
            emitter.emit("probe", {}, room=user_room(app_id, user_id), namespace="/")
            return arrived.wait(0.1)

        wait_until(delivered, TIMEOUT, "the gateway's Redis subscription")
    finally:
        client.disconnect()


# -- tokens, store rows, live emits -----------------------------------------------------------


def token_for(settings: Settings, app_id: str, user_id: str, ttl: int = 300) -> str:
    token, _expires = mint_browser_token(settings.secret_key, app_id, user_id, ttl)
    return token


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Item:
    """A web delivery written into the store for a test."""

    delivery_id: str
    message_id: str
    app_id: str
    user_id: str
    title: str


def add_items(
    runtime: Runtime,
    app_id: str,
    user_id: str,
    count: int = 1,
    *,
    status: str = "sent",
    channel: str = "web",
    shuffle: bool = False,
) -> list[Item]:
    """`count` messages with one delivery each, dispatched as one batch; oldest first.

    Like the dispatcher's, the deliveries share one `created_at`; the messages were created
    one after the other, in delivery id order.
    """
    items = []
    for index in range(count):
        items.append(
            Item(
                delivery_id=new_id("dlv"),
                message_id=new_id("msg"),
                app_id=app_id,
                user_id=user_id,
                title=f"{status} {index} {uuid.uuid4().hex[:6]}",
            )
        )
    items.sort(key=lambda item: item.delivery_id)
    order = random.sample(items, len(items)) if shuffle else items
    now = utcnow()
    created = {
        item.delivery_id: now - timedelta(milliseconds=count - n) for n, item in enumerate(items)
    }
    with runtime.sessions() as session, session.begin():
        for item in order:
            session.add(
                Message(
                    created_at=created[item.delivery_id],
                    id=item.message_id,
                    app_id=app_id,
                    status="dispatched",
                    recipients=[{"user_id": user_id}],
                    channels=[channel],
                    content={"title": item.title, "body": "hello", "url": None, "data": {"k": 1}},
                    category="notification",
                )
            )
            session.flush()
            session.add(
                Delivery(
                    id=item.delivery_id,
                    message_id=item.message_id,
                    app_id=app_id,
                    recipient=f"user:{user_id}",
                    user_id=user_id,
                    channel=channel,
                    status=status,
                    attempts=1,
                    created_at=now,
                    sent_at=now if status in ("sent", "delivered", "read") else None,
                    delivered_at=now if status in ("delivered", "read") else None,
                    read_at=now if status == "read" else None,
                )
            )
    return items


def add_many(runtime: Runtime, app_id: str, user_id: str, count: int) -> list[str]:
    """`count` sent web deliveries in two bulk inserts; their delivery ids, oldest first."""
    messages: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    for index in range(count):
        message_id = new_id("msg")
        messages.append(
            {
                "id": message_id,
                "app_id": app_id,
                "status": "dispatched",
                "recipients": [{"user_id": user_id}],
                "channels": ["web"],
                "content": {"title": f"bulk {index}"},
                "category": "notification",
            }
        )
        deliveries.append(
            {
                "id": new_id("dlv"),
                "message_id": message_id,
                "app_id": app_id,
                "recipient": f"user:{user_id}",
                "user_id": user_id,
                "channel": "web",
                "status": "sent",
            }
        )
    deliveries.sort(key=lambda d: d["id"])
    by_message = {m["id"]: m for m in messages}
    now = utcnow()
    for n, delivery in enumerate(deliveries):
        delivery["created_at"] = now
        by_message[delivery["message_id"]]["created_at"] = now - timedelta(milliseconds=count - n)
    with runtime.sessions() as session, session.begin():
        session.execute(insert(Message), messages)
        session.execute(insert(Delivery), deliveries)
    return [d["id"] for d in deliveries]


def outbound(runtime: Runtime, item: Item) -> OutboundDelivery:
    """What the web worker hands the web channel for `item`."""
    with runtime.sessions() as session:
        delivery = session.get(Delivery, item.delivery_id)
        message = session.get(Message, item.message_id)
        assert delivery is not None and message is not None
        return OutboundDelivery(
            delivery_id=delivery.id,
            message_id=message.id,
            app_id=delivery.app_id,
            channel="web",
            user_id=delivery.user_id,
            address=None,
            category=message.category,
            content=message.content,
            created_at=delivery.created_at,
        )


def emit_live(runtime: Runtime, settings: Settings, item: Item) -> None:
    """Append `item` to the live feed as the web worker does, and keep its receipt."""
    result = WebChannel(context_for(settings, "web")).send(outbound(runtime, item))
    assert result.outcome is Outcome.SENT and result.detail is None, result
    with runtime.sessions() as session, session.begin():  # as the worker records it
        session.execute(
            update(Delivery).where(Delivery.id == item.delivery_id).values(receipt=result.receipt)
        )


def append_to_feed(
    settings: Settings, app_id: str, users: list[str], content: dict[str, Any]
) -> list[str]:
    """Append a notification with `content` for each of `users` (a user may come more than
    once) to the live feed only, as the web channel does; their ids, in order."""
    now = utcnow()
    deliveries = [
        OutboundDelivery(
            delivery_id=new_id("dlv"),
            message_id=new_id("msg"),
            app_id=app_id,
            channel="web",
            user_id=user,
            address=None,
            category="notification",
            content=content,
            created_at=now,
        )
        for user in users
    ]
    results = WebChannel(context_for(settings, "web")).send_many(deliveries)
    assert all(result.outcome is Outcome.SENT for result in results), results
    return [delivery.delivery_id for delivery in deliveries]


def notify_each(runtime: Runtime, settings: Settings, app_id: str, users: list[str]) -> list[str]:
    """One web notification for each user, handed out as the web worker does: claimed
    (`sending`), appended to the live feed, then `sent` with its feed position as receipt.
    Their ids, in `users` order."""
    now = utcnow()
    messages: list[dict[str, Any]] = [
        {
            "id": new_id("msg"),
            "app_id": app_id,
            "status": "dispatched",
            "recipients": [{"user_id": user}],
            "channels": ["web"],
            "content": {"title": f"for {user}"},
            "category": "notification",
            "created_at": now,
        }
        for user in users
    ]
    deliveries: list[dict[str, Any]] = [
        {
            "id": new_id("dlv"),
            "message_id": message["id"],
            "app_id": app_id,
            "recipient": f"user:{user}",
            "user_id": user,
            "channel": "web",
            "status": "sending",
            "created_at": now,
        }
        for user, message in zip(users, messages, strict=True)
    ]
    with runtime.sessions() as session, session.begin():
        session.execute(insert(Message), messages)
        session.execute(insert(Delivery), deliveries)
    results = WebChannel(context_for(settings, "web")).send_many(
        [
            OutboundDelivery(
                delivery_id=delivery["id"],
                message_id=message["id"],
                app_id=app_id,
                channel="web",
                user_id=delivery["user_id"],
                address=None,
                category="notification",
                content=message["content"],
                created_at=now,
            )
            for delivery, message in zip(deliveries, messages, strict=True)
        ]
    )
    assert all(result.outcome is Outcome.SENT for result in results), results
    sent_at = utcnow()
    with runtime.sessions() as session, session.begin():
        session.execute(
            update(Delivery),
            [
                {"id": delivery["id"], "status": "sent", "sent_at": sent_at, "receipt": r.receipt}
                for delivery, r in zip(deliveries, results, strict=True)
            ],
        )
    return [delivery["id"] for delivery in deliveries]


def statuses(runtime: Runtime, items: list[Item]) -> dict[str, str]:
    with runtime.sessions() as session:
        rows = session.execute(
            select(Delivery.id, Delivery.status).where(
                Delivery.id.in_([i.delivery_id for i in items])
            )
        ).all()
    return {row.id: row.status for row in rows}


def events_of(runtime: Runtime, item: Item) -> list[str]:
    with runtime.sessions() as session:
        return list(
            session.scalars(
                select(Event.stage).where(Event.delivery_id == item.delivery_id).order_by(Event.id)
            )
        )


# -- a browser ---------------------------------------------------------------------------------


@dataclass
class Browser:
    """A python-socketio client that records what the gateway sends it, in order."""

    url: str
    client: socketio.Client = field(default_factory=lambda: socketio.Client(reconnection=False))
    received: list[tuple[str, Any]] = field(default_factory=list)
    connect_errors: list[Any] = field(default_factory=list)
    disconnects: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        for event in ("notification", "unread_count", "unauthorized", "error"):
            self.client.on(event, self._recorder(event))
        self.client.on("connect_error", lambda data=None: self.connect_errors.append(data))
        self.client.on("disconnect", lambda reason=None: self.disconnects.append(reason))

    def _recorder(self, event: str) -> Callable[..., None]:
        def record(data: Any = None) -> None:
            self.received.append((event, data))

        return record

    def connect(
        self,
        token: str | None,
        *,
        via_query: bool = False,
        auth_extra: dict[str, Any] | None = None,
        **options: Any,
    ) -> Browser:
        url, auth = self.url, None
        if token is not None and via_query:
            url = f"{self.url}?token={token}"
        elif token is not None:
            auth = {"token": token, **(auth_extra or {})}
        options.setdefault("transports", ["websocket"])
        self.client.connect(url, auth=auth, wait_timeout=TIMEOUT, **options)
        return self

    def notifications(self) -> list[dict[str, Any]]:
        return [data for name, data in list(self.received) if name == "notification"]

    def ids(self) -> list[str]:
        return [n["id"] for n in self.notifications()]

    def counts(self) -> list[int]:
        return [data["count"] for name, data in list(self.received) if name == "unread_count"]

    def events(self, event: str) -> list[Any]:
        """The bodies of every `event` received, in order."""
        return [data for name, data in list(self.received) if name == event]

    def wait(self, predicate: Callable[[Browser], Any], what: str) -> Any:
        return wait_until(lambda: predicate(self), TIMEOUT, what)

    def wait_count(self, count: int) -> None:
        self.wait(lambda b: count in b.counts(), f"unread_count {count}")

    def call(self, event: str, *data: Any) -> Any:
        return self.client.call(event, *data, timeout=TIMEOUT)

    def close(self) -> None:
        if self.client.connected:
            self.client.disconnect()
