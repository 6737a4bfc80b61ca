"""The chat channel's rig for Feishu: its custom bot, signed with the bot's secret."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shared.settings import Settings
from tests.channel_harness import Answer, Rig
from tests.chat_robots import FeishuServer, robot_rig

CHANNEL = "chat"
SUPPORTS = frozenset(Answer)


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    with robot_rig(FeishuServer(secret="feishu-signing-secret"), settings) as built:
        yield built
