"""The chat channel's rig for Slack: its incoming webhook (no secret: the URL is the credential)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shared.settings import Settings
from tests.channel_harness import Answer, Rig
from tests.chat_robots import SlackServer, robot_rig

CHANNEL = "chat"
SUPPORTS = frozenset(Answer)


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    with robot_rig(SlackServer(secret=None), settings) as built:
        yield built
