"""The live feed: the Redis Stream that the web channel appends notifications to and that every
gateway reads.

Redis pub/sub forgets what it publishes while a subscriber is away; a stream keeps it, so a
gateway that lost Redis for a moment (a dropped connection, a paused network) reads on from the
last entry it handled. The stream is trimmed to about `MAX_ENTRIES`. Its epoch, a key written
beside it by whoever finds it missing, changes when Redis lost the stream (a restart without
persistence): a gateway that sees another epoch, or finds entries it never read trimmed away,
catches up from the store instead (`ws_gateway.feed`).

Each entry holds the user's Socket.IO room, the delivery id and the `notification` payload as
JSON.
"""

from __future__ import annotations

#: About how many entries the stream keeps (`XADD ... MAXLEN ~`): minutes of traffic.
MAX_ENTRIES = 100_000


def feed_key(queue_prefix: str) -> str:
    """The stream's key."""
    return f"{queue_prefix}:live-feed"


def epoch_key(queue_prefix: str) -> str:
    """The key of the stream's epoch."""
    return f"{queue_prefix}:live-feed:epoch"
