"""The sms channel through Alibaba Cloud SMS (`SendSms`, HMAC-SHA1 signed), on a local server
(`tests.sms_providers`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shared.settings import Settings
from tests.channel_harness import Answer, Rig
from tests.sms_providers import AliyunServer, sms_rig

CHANNEL = "sms"
SUPPORTS = frozenset(Answer)


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    with AliyunServer() as server, sms_rig(settings, server) as built:
        yield built
