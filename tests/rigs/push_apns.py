"""The push channel's rig for an Apple device: the APNs fake (HTTP/2 over TLS, its certificate
trusted through `[apns] ca_file`) behind a fault proxy."""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from itertools import count
from pathlib import Path

from channels.base import DeviceTarget, OutboundDelivery
from channels.registry import channel_class
from shared.config_file import ApnsConfig
from shared.settings import Settings
from tests.apns_server import ApnsFake, running_apns
from tests.channel_harness import Answer, Rig, context_for, delivery_for
from tests.fault_proxy import FaultProxy

CHANNEL = "push"
SUPPORTS = frozenset(Answer)
# Far from the FCM rig's ids, so a test holding both kinds of device keeps them apart.
_DEVICE_IDS = count(100_000)


class ApnsFault:
    """APNs as the sender meets it: the fake's answers, or the proxy hanging or refusing."""

    def __init__(self, fake: ApnsFake, proxy: FaultProxy) -> None:
        self.fake, self.proxy = fake, proxy

    def answer(self, mode: Answer) -> None:
        self.proxy.resume()
        if mode is Answer.TIMEOUT:
            self.proxy.hang()
        elif mode is Answer.DOWN:
            self.proxy.refuse()
        self.fake.answer(mode)


def apns_settings(settings: Settings, fake: ApnsFake, base_url: str, directory: Path) -> Settings:
    """`settings` with `[apns]` set up for `fake`, reached at `base_url`."""
    key_file = directory / f"AuthKey_{fake.key_id}.p8"
    key_file.write_text(fake.key_pem(), encoding="utf-8")
    apns = ApnsConfig(
        key_file=str(key_file),
        key_id=fake.key_id,
        team_id=fake.team_id,
        topic=fake.topic,
        base_url=base_url,
        timeout=1,
        ca_file=str(fake.certfile),
    )
    return settings.with_overrides(config=replace(settings.config, apns=apns))


def apns_device(token: str | None = None) -> DeviceTarget:
    """An Apple device of the user, with a device token (64 hex digits) of its own."""
    return DeviceTarget(next(_DEVICE_IDS), "apns", token or secrets.token_hex(32), None)


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    with (
        running_apns() as fake,
        FaultProxy("127.0.0.1", fake.server.port) as proxy,
        tempfile.TemporaryDirectory() as directory,
    ):
        via = apns_settings(settings, fake, f"https://{proxy.address}", Path(directory))
        channel = channel_class(CHANNEL)(context_for(via, CHANNEL))

        def delivery() -> OutboundDelivery:
            return delivery_for(CHANNEL, devices=(apns_device(),))

        def check_sent(sent: OutboundDelivery) -> None:
            (device,) = sent.devices
            (payload,) = [p for token, _, p in fake.sent if token == device.token]
            assert payload == {"aps": {"alert": {"title": "Hello", "body": "World"}}, "k": 1}

        try:
            yield Rig(channel, ApnsFault(fake, proxy), delivery, check_sent)
        finally:
            channel.close()
