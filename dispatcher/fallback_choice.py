"""Which channel takes over from a delivery that failed for good: the message's `fallback` list
read in order. The one decision shared by the dispatcher (a recipient a channel cannot reach)
and the channel workers (a send that failed for good)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence


def recipient_kind(recipient: str) -> str:
    """The kind of a delivery's recipient key (`user:alice` -> `user`, `email:...` -> `email`),
    as `channels.registry.reach_table` names what a channel reaches."""
    return recipient.partition(":")[0]


def next_channel(
    failed_channel: str,
    kind: str,
    fallback: Sequence[str] | None,
    used: Collection[str],
    reaches: Mapping[str, frozenset[str]],
) -> str | None:
    """The channel that takes over a recipient of `kind` whose delivery on `failed_channel`
    failed for good: the first of `fallback` not `used` for that recipient yet that reaches
    such a recipient; None when there is none."""
    for channel in fallback or ():
        if channel == failed_channel or channel in used:
            continue
        if kind in reaches.get(channel, frozenset()):
            return channel
    return None
