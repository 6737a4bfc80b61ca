"""Who a message reaches on which channel: its `to` entries expanded into delivery targets.

A user (named, or a topic's subscriber at dispatch time) is reached on every channel of the
message that serves users; a bare email address or phone number, or an app's endpoint, only on
the channels that deliver to such an address; an endpoint only on the one channel its kind
needs (`shared.endpoint_kinds`) when it is known. Each recipient gets one delivery per channel
however many entries name it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

#: The kind of recipient `reaches` names for a channel that serves the app's users.
USER = "user"


class Target(NamedTuple):
    """One delivery to write: a recipient (by key) on one channel."""

    recipient: str
    user_id: str | None
    address: str | None
    channel: str


def recipient_key(kind: str, value: str) -> str:
    """The identity of a recipient within one message: `user:alice`, `email:a@example.com`."""
    return f"{kind}:{value.lower() if kind == 'email' else value}"


def delivery_targets(
    recipients: Iterable[dict[str, Any]],
    channels: Iterable[str],
    subscribers: Callable[[str], list[str]],
    reaches: Mapping[str, frozenset[str]],
    endpoint_channels: Mapping[str, str] | None = None,
) -> list[Target]:
    """The deliveries of one message, in the order of its `to` entries then its channels.

    `subscribers(topic)` lists a topic's users now; `reaches[channel]` names the kinds of
    recipient a channel delivers to (`USER`, and bare address kinds such as `email`);
    `endpoint_channels[name]` is the channel of the app's endpoint `name` (one that is gone
    keeps every channel that reaches endpoints, whose worker then records it as failed).
    """
    channel_list = list(channels)
    user_channels = [c for c in channel_list if USER in reaches.get(c, frozenset())]
    seen: set[tuple[str, str]] = set()
    targets: list[Target] = []

    def add(key: str, user_id: str | None, address: str | None, on: list[str]) -> None:
        for channel in on:
            if (key, channel) not in seen:
                seen.add((key, channel))
                targets.append(Target(key, user_id, address, channel))

    for entry in recipients:
        if "user_id" in entry:
            add(recipient_key("user", entry["user_id"]), entry["user_id"], None, user_channels)
        elif "topic" in entry:
            for user_id in subscribers(entry["topic"]):
                add(recipient_key("user", user_id), user_id, None, user_channels)
        else:
            ((kind, address),) = entry.items()
            reaching = [c for c in channel_list if kind in reaches.get(c, frozenset())]
            routed = (endpoint_channels or {}).get(address) if kind == "endpoint" else None
            if routed is not None:
                reaching = [c for c in reaching if c == routed]
            add(recipient_key(kind, address), None, address, reaching)
    return targets
