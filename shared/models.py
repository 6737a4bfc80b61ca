"""The SQLAlchemy models of the omnipush store, shared by every service."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from shared.ids import utcnow

JsonType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite forgets zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use shared.ids.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every omnipush table."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JsonType,
        list[Any]: JsonType,
        datetime: UTCDateTime,
    }


class App(Base):
    """A business system that sends messages with any of its API keys (`ApiKey`)."""

    __tablename__ = "apps"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Requests per second and burst of its API key's token bucket; unset takes the defaults.
    rate_limit: Mapped[float | None] = mapped_column(Float)
    rate_burst: Mapped[int | None] = mapped_column(Integer)
    # Its fan-out limits (see producer_api/fanout.py); unset takes the defaults.
    max_recipients_per_request: Mapped[int | None] = mapped_column(Integer)
    max_recipients_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_topic_subscribers: Mapped[int | None] = mapped_column(Integer)
    # Where a message's final status is POSTed when the message names no callback_url.
    callback_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """One API key of an app, stored as a SHA-256 hash. An app may have several (to rotate one
    without a moment with none); a revoked key stays, refused, so its id still means something."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_app", "app_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The key's first characters, not secret, so that a person can tell which key is which.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class User(Base):
    """A recipient, known to one app by that app's own user id."""

    __tablename__ = "users"

    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(32))
    timezone: Mapped[str | None] = mapped_column(String(64))
    locale: Mapped[str | None] = mapped_column(String(35))
    preferences: Mapped[dict[str, Any]] = mapped_column(default=dict)
    quiet_hours: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Device(Base):
    """A push target of a user: an FCM or APNs token, or a Web Push subscription."""

    __tablename__ = "devices"
    __table_args__ = (
        ForeignKeyConstraint(
            ["app_id", "user_id"], ["users.app_id", "users.user_id"], ondelete="CASCADE"
        ),
        Index("ix_devices_user", "app_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    app_id: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str] = mapped_column(String(200))
    platform: Mapped[str] = mapped_column(String(16))
    token: Mapped[str | None] = mapped_column(Text)
    subscription: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Topic(Base):
    """A named audience of one app; a message to it reaches its subscribers at dispatch time."""

    __tablename__ = "topics"

    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Subscription(Base):
    """One user subscribed to one topic."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        ForeignKeyConstraint(
            ["app_id", "topic_key"], ["topics.app_id", "topics.key"], ondelete="CASCADE"
        ),
    )

    app_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    topic_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Template(Base):
    """A message template of one app: per-channel parts `{channel: {field: Jinja2 source}}`."""

    __tablename__ = "templates"

    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    code: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    parts: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Message(Base):
    """One message as a business system submitted it, and where it stands overall."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_app_created", "app_id", "created_at"),
        Index("ix_messages_app_status", "app_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(24))
    recipients: Mapped[list[Any]] = mapped_column()
    channels: Mapped[list[Any]] = mapped_column()
    content: Mapped[dict[str, Any]] = mapped_column()
    category: Mapped[str] = mapped_column(String(24), default="notification")
    priority: Mapped[str] = mapped_column(String(8), default="normal")
    send_at: Mapped[datetime | None] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column()
    dedup_key: Mapped[str | None] = mapped_column(String(200))
    callback_url: Mapped[str | None] = mapped_column(Text)
    # Channels to try, in order, for a recipient whose delivery fails for good.
    fallback: Mapped[list[Any] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Delivery(Base):
    """One message to one recipient on one channel; the web ones are the user's inbox."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("message_id", "recipient", "channel", name="uq_deliveries_target"),
        # The gateway's replay and unread count: one user's web items by status, oldest first.
        Index("ix_deliveries_inbox", "app_id", "user_id", "channel", "status", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(String(40))
    recipient: Mapped[str] = mapped_column(String(400))
    user_id: Mapped[str | None] = mapped_column(String(200))
    address: Mapped[str | None] = mapped_column(String(400))
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()
    delivered_at: Mapped[datetime | None] = mapped_column()
    read_at: Mapped[datetime | None] = mapped_column()
    # The failed delivery to the same recipient that this one replaces (channels.fallback).
    fallback_of: Mapped[str | None] = mapped_column(String(40))
    # When a `deferred` delivery (quiet hours) may be sent; its outbox row is published then.
    release_at: Mapped[datetime | None] = mapped_column()
    # What the channel named the send that went through (`channels.base.Result.receipt`): for
    # web, the notification's position in the live feed.
    receipt: Mapped[str | None] = mapped_column(String(64))


class Endpoint(Base):
    """A webhook or chat robot of one app, reached by `"to": [{"endpoint": name}]`. The secret
    signs what is sent to it, so it is kept as given (it is the receiver's to verify with)."""

    __tablename__ = "endpoints"

    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeadLetter(Base):
    """A delivery that failed for good, kept for an operator to read and replay."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        Index("ix_dead_letters_app", "app_id", "id"),
        Index("ix_dead_letters_channel", "channel", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(40))
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column()


class MessageExpansion(Base):
    """How far the dispatcher has expanded a message too large for one transaction: `step` 0
    is its direct recipients, step n its n-th topic, read in user id order after `after`."""

    __tablename__ = "message_expansions"

    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, default=0)
    after: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    """One step in the life of a message or one of its deliveries: the trace."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_message", "message_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    delivery_id: Mapped[str | None] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    stage: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class OutboxEntry(Base):
    """A message waiting to be handed to the broker; the relay publishes and marks it."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_pending",
            "available_at",
            "id",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    routing_key: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column()
    available_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Callback(Base):
    """A message's final status, waiting to be POSTed to its callback URL (`shared.outbox`)."""

    __tablename__ = "callbacks"
    __table_args__ = (
        Index(
            "ix_callbacks_due",
            "next_attempt_at",
            "id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    # Also the `webhook-id` of every attempt, so that a receiver can tell a retry from news.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column()
    # pending (until sent or given up), sent, failed.
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When a sender may take it next: due, after a back-off, or once a sender's claim lapses.
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AppPolicy(Base):
    """An app's own settings of the dispatcher's policy stages (`shared.policy`), over the
    operator's `[policy]` defaults; set by `PUT /v1/policy`."""

    __tablename__ = "app_policies"

    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    overrides: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """The first answer to a request sent with an `Idempotency-Key`, replayed to its retries."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created", "created_at"),)

    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    headers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def table_of(model: type[Base]) -> Table:
    """The Core table of a model, for bulk statements that skip the ORM's bookkeeping."""
    return cast(Table, model.__table__)
