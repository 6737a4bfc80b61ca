"""Slack incoming webhooks: a JSON POST of `text` (the notification's fallback) and `blocks`.

Slack answers 200 with the body `ok`. Its documented failures are plain-text codes with an HTTP
status: 400 `invalid_payload`, 403 `action_prohibited`, 404 `channel_not_found` or `no_service`
(the webhook was removed), 410 `channel_is_archived`; none of them gets better by retrying.
A 429 carries `Retry-After` (read by `post_json`).
"""

from __future__ import annotations

from typing import Any

import httpx

from channels.base import EndpointTarget, Result
from channels.chat_robots import ChatText, RobotRequest, quoted

# Slack's limits on a header block's text and a section's text.
_HEADER_CHARS = 150
_SECTION_CHARS = 3000


def escape(text: str) -> str:
    """Text as Slack's mrkdwn shows it literally: `&`, `<` and `>` are its control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackRobot:
    """Slack's incoming webhook; it has no secret of its own (the URL is the credential)."""

    kind = "slack"
    name = "Slack"

    def request(self, endpoint: EndpointTarget, text: ChatText, now: float) -> RobotRequest:
        link = f"<{text.url}|{escape(text.url)}>" if text.url else None
        lines = [f"*{escape(text.title)}*" if text.title else None, escape(text.body), link]
        blocks: list[dict[str, Any]] = []
        if text.title:
            title = {"type": "plain_text", "text": text.title[:_HEADER_CHARS]}
            blocks.append({"type": "header", "text": title})
        # A long body is cut, its link kept.
        room = _SECTION_CHARS - (len(link) + 1 if link else 0)
        body = escape(text.body)
        body = body if len(body) <= room else body[: room - 1] + "…"
        section_text = "\n".join(line for line in (body, link) if line)
        if section_text:
            section = {"type": "mrkdwn", "text": section_text}
            blocks.append({"type": "section", "text": section})
        fallback = "\n".join(line for line in lines if line)
        return RobotRequest({"text": fallback, "blocks": blocks})

    def outcome(self, response: httpx.Response) -> Result:
        if response.status_code == 200:
            return Result.sent()
        return Result.permanent(f"Slack answered {response.status_code}: {quoted(response)}")
