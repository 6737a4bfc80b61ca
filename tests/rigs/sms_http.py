"""The sms channel through the generic HTTP gateway, on a local server (`tests.sms_providers`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shared.settings import Settings
from tests.channel_harness import Answer, Rig
from tests.sms_providers import GatewayServer, sms_rig

CHANNEL = "sms"
SUPPORTS = frozenset(Answer)


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    with GatewayServer() as server, sms_rig(settings, server) as built:
        yield built
