"""The live feed: the Redis Stream that the web channel appends notifications to and that every
gateway reads.

Redis pub/sub forgets what it publishes while a subscriber is away; a stream keeps it, so a
gateway that lost Redis for a moment (a dropped connection, a paused network) reads on from the
last entry it handled. The stream is trimmed to about `MAX_ENTRIES`. Its epoch, a key written
beside it by whoever finds it missing, changes when Redis lost the stream (a restart without
persistence): a gateway that sees another epoch, or finds entries it never read trimmed away,
catches up from the store instead (`ws_gateway.feed`).

Each entry holds the user's Socket.IO room, the delivery id and the `notification` payload as
JSON. An entry's id is the notification's `position`: the web channel keeps it as the
delivery's receipt, the gateway adds it to what it sends, and a browser that reconnects says
the last one it saw (`since`) to get what it missed.
"""

from __future__ import annotations

import re

_POSITION = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

#: About how many entries the stream keeps (`XADD ... MAXLEN ~`): minutes of traffic.
MAX_ENTRIES = 100_000


def feed_key(queue_prefix: str) -> str:
    """The stream's key."""
    return f"{queue_prefix}:live-feed"


def epoch_key(queue_prefix: str) -> str:
    """The key of the stream's epoch."""
    return f"{queue_prefix}:live-feed:epoch"


def emitted_key(queue_prefix: str, delivery_id: str) -> str:
    """The web channel's marker that it appended `delivery_id`; it holds the entry's position."""
    return f"{queue_prefix}:web:emitted:{delivery_id}"


def is_position(value: object) -> bool:
    """Whether `value` is a stream entry id (`millis-sequence`)."""
    return isinstance(value, str) and _POSITION.fullmatch(value) is not None


def position_key(position: str) -> tuple[int, int]:
    """A position as something that orders (entry ids do not order as strings)."""
    millis, _, sequence = position.partition("-")
    return int(millis), int(sequence or 0)
