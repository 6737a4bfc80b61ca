"""The chat channel's rig for DingTalk: its custom robot, signed with the robot's secret."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shared.settings import Settings
from tests.channel_harness import Answer, Rig
from tests.chat_robots import DingTalkServer, robot_rig

CHANNEL = "chat"
SUPPORTS = frozenset(Answer)


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    with robot_rig(DingTalkServer(secret="SEC0f1e2d3c4b5a69788796a5b4c3d2e1f0"), settings) as built:
        yield built
