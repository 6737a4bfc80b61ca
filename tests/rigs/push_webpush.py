"""The push channel's Web Push rig: a local push service that verifies VAPID and decrypts."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager

from channels.base import DeviceTarget, OutboundDelivery
from channels.registry import channel_class
from channels.vapid import VapidKey
from shared.config_file import FileConfig, WebPushConfig
from shared.settings import Settings
from tests.channel_harness import Answer, Rig, context_for, delivery_for
from tests.webpush_receiver import WebPushReceiver

CHANNEL = "push"
SUPPORTS = frozenset(Answer)
SUBJECT = "mailto:ops@example.com"
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


def webpush_settings(settings: Settings, key: VapidKey, allow_loopback: bool = True) -> Settings:
    """`settings` with `[webpush]` set to `key` (a short timeout), and the guard opened for
    127.0.0.1 when `allow_loopback`."""
    config = FileConfig(
        webpush=WebPushConfig(vapid_private_key=key.private_b64(), vapid_subject=SUBJECT, timeout=1)
    )
    return settings.with_overrides(config=config, outbound_allow=LOOPBACK if allow_loopback else ())


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    key = VapidKey.generate()
    with WebPushReceiver(SUBJECT, key.public_b64()) as receiver:
        channel = channel_class(CHANNEL)(context_for(webpush_settings(settings, key), CHANNEL))

        def delivery() -> OutboundDelivery:
            subscription = receiver.subscribe().as_json()
            return delivery_for(CHANNEL, devices=(DeviceTarget(1, "webpush", None, subscription),))

        def check_sent(sent: OutboundDelivery) -> None:
            assert receiver.problems == []
            (got,) = receiver.received
            assert got.payload == sent.part(("title", "body", "url", "data"))
            assert got.claims["aud"] == receiver.origin

        try:
            yield Rig(channel, receiver, delivery, check_sent)
        finally:
            channel.close()
