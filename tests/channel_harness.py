"""The shared harness every channel adapter is tested through, as Apprise tests its plugins.

A rig (one module in `tests/rigs/`, one per channel or provider) starts a local server that
speaks the provider's documented protocol and checks each request as the provider would, builds
the adapter against it, and says how to make a delivery for it. `tests/test_channel_contract.py`
runs every rig through every `Answer` it supports and holds the adapter to the `Outcome` the
worker runtime needs for it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import redis

from channels.base import Channel, ChannelContext, OutboundDelivery, Outcome
from channels.worker import build_channel_context
from shared.best_effort_redis import BestEffortRedis
from shared.ids import new_id, utcnow
from shared.settings import Settings
from tests.conftest import REDIS_URL, queue_prefix


class Answer(enum.Enum):
    """What the provider's server does with the next requests."""

    OK = "ok"
    SLOW_DOWN = "slow down"  # HTTP 429 with Retry-After (SMTP: 421/451 "try later")
    SERVER_ERROR = "server error"  # HTTP 5xx (SMTP: a 4xx reply)
    TIMEOUT = "timeout"  # accepts the connection, never answers within the client's timeout
    REJECT_ADDRESS = "reject address"  # the provider refuses this recipient for good
    DOWN = "down"  # nothing listens


#: What the worker must get back from the adapter for each answer.
EXPECTED: dict[Answer, Outcome] = {
    Answer.OK: Outcome.SENT,
    Answer.SLOW_DOWN: Outcome.DEFERRED,
    Answer.SERVER_ERROR: Outcome.TRANSIENT,
    Answer.TIMEOUT: Outcome.TRANSIENT,
    Answer.REJECT_ADDRESS: Outcome.PERMANENT,
    Answer.DOWN: Outcome.TRANSIENT,
}


class ProviderFake(Protocol):
    """A local server standing in for a provider."""

    def answer(self, mode: Answer) -> None:
        """Answer every following request this way."""


@dataclass
class Rig:
    """A channel adapter wired to a local provider.

    `delivery()` makes a delivery it can send; `check_sent(delivery)` asserts what the provider
    received for a delivery answered OK (fields, auth, signature), as the provider would.

    A rig module defines `CHANNEL` (the channel's name), `SUPPORTS` (the answers its provider
    can give) and `rig(settings)`, a context manager that yields a `Rig` and stops its servers.
    """

    channel: Channel
    fake: ProviderFake
    delivery: Callable[[], OutboundDelivery]
    check_sent: Callable[[OutboundDelivery], None]


@contextmanager
def channel_settings() -> Iterator[Settings]:
    """Settings of a queue prefix of its own (its Redis keys deleted afterwards) for adapters."""
    with queue_prefix() as prefix:
        yield Settings(redis_url=REDIS_URL, queue_prefix=prefix, secret_key="x" * 40)


def context_for(settings: Settings, channel: str) -> ChannelContext:
    """The context a worker of `channel` would give its adapter, on `settings`."""
    return build_channel_context(
        settings,
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=2),
        BestEffortRedis(settings.redis_url),
        channel,
    )


def delivery_for(channel: str, **changes: Any) -> OutboundDelivery:
    """A delivery of a plain notification to user `alice` on `channel`, with `changes`."""
    base = OutboundDelivery(
        delivery_id=new_id("dlv"),
        message_id=new_id("msg"),
        app_id="app_contract",
        channel=channel,
        user_id="alice",
        address=None,
        category="notification",
        content={"title": "Hello", "body": "World", "url": None, "data": {"k": 1}},
        created_at=utcnow(),
    )
    return replace(base, **changes)
