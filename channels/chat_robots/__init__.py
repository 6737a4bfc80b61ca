"""The chat robots the `chat` channel sends to, one module per vendor, and what they share.

A robot module knows one vendor's incoming-webhook protocol and nothing else: `request` builds
the body (and the signature the endpoint's secret asks for) exactly as the vendor documents it,
and `outcome` reads the vendor's own answer (an HTTP status, or an error code in a JSON body) as
sent, slow down, transient or permanent.

What every robot shares lives here: the text a message gives a robot (`ChatText`), and
`post_json`, which calls the URL (an app supplied it, so through the private-address guard's
client) and classifies what HTTP itself says before the robot reads the answer: a refused
address is permanent; a timeout, a connection error and a 5xx are transient; a 429 slows the
endpoint down for its `Retry-After`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from channels.base import EndpointTarget, Result
from shared.outbound import OutboundRefused
from shared.retry_after import retry_after_seconds

#: How long a 429 without a (readable) Retry-After keeps an endpoint paused, in seconds.
DEFAULT_RETRY_AFTER_SECONDS = 5.0
#: How much of an unexpected answer a failure's detail quotes.
_QUOTED = 120


@dataclass(frozen=True)
class ChatText:
    """What a message says in a chat: an optional title, the body and an optional link."""

    title: str | None
    body: str
    url: str | None

    def plain(self) -> str:
        """Title, body and link as plain lines (for vendors' `text` messages)."""
        return "\n".join(line for line in (self.title, self.body, self.url) if line)


@dataclass(frozen=True)
class RobotRequest:
    """One POST to a robot's webhook URL: the JSON body and query parameters to add."""

    body: dict[str, Any]
    params: dict[str, str] = field(default_factory=dict)


class Robot(Protocol):
    """One vendor's robot protocol (see the module docstring)."""

    kind: str
    name: str

    def request(self, endpoint: EndpointTarget, text: ChatText, now: float) -> RobotRequest:
        """The request for `text`, signed with the endpoint's secret (if any) at time `now`."""

    def outcome(self, response: httpx.Response) -> Result:
        """The vendor's answer (not a 429 or 5xx: `post_json` read those) as a result."""


def clip_bytes(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, never inside a character, with an ellipsis
    when cut: a vendor refuses a message over its limit for good, a cut one still says most."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    ellipsis = "…"
    kept = encoded[: limit - len(ellipsis.encode())].decode(errors="ignore")
    return kept + ellipsis


def lines_fitting(before: str | None, body: str, after: str | None, limit: int) -> str:
    """The non-empty of `before`, `body` and `after` as lines within `limit` bytes of UTF-8,
    only the body cut: a long message keeps its title and its link."""
    fixed = [line for line in (before, after) if line]
    room = limit - len("\n".join(fixed).encode()) - len(fixed)
    lines = [before, clip_bytes(body, max(room, 0)) if body else "", after]
    return "\n".join(line for line in lines if line)


def post_json(client: httpx.Client, robot: Robot, url: str, request: RobotRequest) -> Result:
    """POST `request` to `url` through `client` (the guard's) and classify the answer."""
    try:
        # Added to the URL's own query (a token or key), which httpx's `params=` would replace.
        target = httpx.URL(url).copy_merge_params(request.params)
        response = client.post(target, json=request.body)
    except httpx.InvalidURL:
        return Result.permanent(f"{robot.name} URL is not a valid URL")
    except OutboundRefused as refused:
        return Result.permanent(f"{robot.name} URL refused: {refused}")
    except httpx.TimeoutException:
        return Result.transient(f"{robot.name} did not answer in time")
    except httpx.RequestError as error:  # connection refused or reset, TLS, a bad answer
        return Result.transient(f"{robot.name} unreachable: {type(error).__name__}")
    if response.status_code == 429:
        return Result.deferred(
            f"{robot.name} answered 429: slowing down",
            retry_after=retry_after_seconds(
                response.headers.get("retry-after"), DEFAULT_RETRY_AFTER_SECONDS
            ),
        )
    if response.status_code >= 500:
        return Result.transient(f"{robot.name} answered {response.status_code}")
    return robot.outcome(response)


def json_answer(response: httpx.Response) -> dict[str, Any] | None:
    """The answer's JSON object, or None when it is not one."""
    try:
        answer = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return answer if isinstance(answer, dict) else None


def quoted(response: httpx.Response) -> str:
    """The start of an answer's body, for a failure's detail."""
    return response.text[:_QUOTED].strip() or "(empty body)"
