"""The push channel's FCM rig: a local FCM v1 with its OAuth token endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from channels.base import DeviceTarget, OutboundDelivery
from channels.registry import channel_class
from shared.config_file import FcmConfig, FileConfig
from shared.settings import Settings
from tests.channel_harness import Answer, Rig, context_for, delivery_for
from tests.push_providers import FcmServer

CHANNEL = "push"
SUPPORTS = frozenset(Answer)


def fcm_settings(settings: Settings, server: FcmServer) -> Settings:
    """`settings` with `[fcm]` on `server` (a short timeout)."""
    config = FileConfig(
        fcm=FcmConfig(
            service_account_file=server.service_account(), base_url=server.origin, timeout=1
        )
    )
    return settings.with_overrides(config=config)


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    with FcmServer() as server:
        channel = channel_class(CHANNEL)(context_for(fcm_settings(settings, server), CHANNEL))

        def delivery() -> OutboundDelivery:
            return delivery_for(CHANNEL, devices=(DeviceTarget(1, "fcm", "fcm-token-1", None),))

        def check_sent(sent: OutboundDelivery) -> None:
            assert server.problems == []
            (got,) = server.received
            assert got["token"] == "fcm-token-1"
            assert got["notification"] == {"title": "Hello", "body": "World"}
            assert got["data"] == {"k": "1"}

        try:
            yield Rig(channel, server, delivery, check_sent)
        finally:
            channel.close()
