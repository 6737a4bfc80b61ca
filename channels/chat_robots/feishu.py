"""Feishu / Lark custom bots: a JSON POST of `{"msg_type", "content"}` (`post` or `text`).

With a secret (the bot's signature check), the body also carries `timestamp` (seconds, as a
string) and `sign`: the Base64 of HMAC-SHA256 keyed by `"{timestamp}\\n{secret}"` over an empty
message (the key is the string to sign; Feishu's own samples do it this way round).

Feishu answers JSON `{"code", "msg"}` (older deployments `{"StatusCode", "StatusMessage"}`),
with HTTP 200 or 400: 0 is sent; 11232 is its frequency limit (100 a minute, 5 a second);
19021 a signature that does not match or a timestamp more than an hour off. 9499 is Feishu's
gateway's catch-all: "Too Many Request" is a frequency limit, anything else ("Bad Request") a
body that will never pass, like every other code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import httpx

from channels.base import EndpointTarget, Result
from channels.chat_robots import ChatText, RobotRequest, json_answer, quoted

SENT, GATEWAY, FREQUENCY, BAD_SIGN = 0, 9499, 11232, 19021
#: How long a bot over its frequency limit is left alone: its window is a minute.
LIMITED_SECONDS = 60.0


def feishu_sign(secret: str, timestamp: int) -> str:
    """The body's `sign` field."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


class FeishuRobot:
    """Feishu's (and Lark's) custom bot (`https://open.feishu.cn/open-apis/bot/v2/hook/...`)."""

    kind = "feishu"
    name = "Feishu"

    def request(self, endpoint: EndpointTarget, text: ChatText, now: float) -> RobotRequest:
        body: dict[str, Any]
        if text.title:
            lines: list[list[dict[str, str]]] = [[{"tag": "text", "text": text.body}]]
            if text.url:
                lines.append([{"tag": "a", "text": text.url, "href": text.url}])
            post = {"zh_cn": {"title": text.title, "content": lines}}
            body = {"msg_type": "post", "content": {"post": post}}
        else:
            body = {"msg_type": "text", "content": {"text": text.plain()}}
        if endpoint.secret:
            timestamp = int(now)
            body["timestamp"] = str(timestamp)
            body["sign"] = feishu_sign(endpoint.secret, timestamp)
        return RobotRequest(body)

    def outcome(self, response: httpx.Response) -> Result:
        answer = json_answer(response) or {}
        code = answer.get("code", answer.get("StatusCode"))
        message = str(answer.get("msg", answer.get("StatusMessage", "")))
        if code is None:
            return Result.permanent(f"Feishu answered {response.status_code}: {quoted(response)}")
        if code == SENT and response.status_code == 200:
            return Result.sent()
        limited = code == FREQUENCY or (code == GATEWAY and "too many" in message.lower())
        if limited:
            return Result.deferred(f"Feishu: {code} {message}", retry_after=LIMITED_SECONDS)
        if code == BAD_SIGN:
            return Result.permanent(f"Feishu refused the signature: {message}")
        return Result.permanent(f"Feishu: {code} {message}")
