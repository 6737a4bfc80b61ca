"""The chat channel's rig for WeCom: its group robot (no secret: the URL's key is all)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shared.settings import Settings
from tests.channel_harness import Answer, Rig
from tests.chat_robots import WeComServer, robot_rig

CHANNEL = "chat"
SUPPORTS = frozenset(Answer)


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    with robot_rig(WeComServer(secret=None), settings) as built:
        yield built
