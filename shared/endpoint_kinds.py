"""The kinds of an app's endpoints, and the channel that reaches each kind.

A `{"endpoint": name}` recipient is delivered on one channel only, the one its endpoint's kind
names: `webhook` for a signed webhook, `chat` for the chat robots. The API checks a message
against it at acceptance, and the dispatcher routes by it.
"""

from __future__ import annotations

import re

WEBHOOK = "webhook"
ROBOTS = ("slack", "dingtalk", "feishu", "wecom")
KINDS = (WEBHOOK, *ROBOTS)
#: An endpoint's name: 1 to 100 of letters, digits, `.`, `_` and `-`, starting alphanumeric.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE = (
    "An endpoint name is 1 to 100 of letters, digits, '.', '_' and '-', starting alphanumeric."
)


def channel_for(kind: str) -> str:
    """The channel that delivers to an endpoint of `kind`."""
    return WEBHOOK if kind == WEBHOOK else "chat"
