"""DingTalk custom robots: a JSON POST of a `markdown` (or `text`) message.

With a secret (the robot's "加签" setting, `SEC...`), the URL carries `timestamp` (milliseconds)
and `sign`: the Base64 of HMAC-SHA256 keyed by the secret over `"{timestamp}\\n{secret}"`,
URL-encoded (httpx encodes query parameters once, which is that encoding).

DingTalk answers HTTP 200 with `{"errcode", "errmsg"}`: 0 is sent; 130101 means more than 20
messages a minute, after which the robot is throttled for 10 minutes; -1 is "system busy";
310000 is a security check that failed (keywords, signature, IP allow-list) and every other
code a request that will never pass as it is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import httpx

from channels.base import EndpointTarget, Result
from channels.chat_robots import ChatText, RobotRequest, json_answer, quoted

SENT, TOO_FAST, BUSY, SECURITY = 0, 130101, -1, 310000
#: How long DingTalk throttles a robot that sent too fast.
THROTTLED_SECONDS = 600.0


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """The `sign` query parameter before URL encoding."""
    digest = hmac.new(
        secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode()


class DingTalkRobot:
    """DingTalk's custom group robot (`https://oapi.dingtalk.com/robot/send?access_token=...`)."""

    kind = "dingtalk"
    name = "DingTalk"

    def request(self, endpoint: EndpointTarget, text: ChatText, now: float) -> RobotRequest:
        if text.title:
            lines = [f"### {text.title}", text.body]
            if text.url:
                lines.append(f"[{text.url}]({text.url})")
            markdown = {"title": text.title, "text": "\n\n".join(line for line in lines if line)}
            body: dict[str, object] = {"msgtype": "markdown", "markdown": markdown}
        else:
            body = {"msgtype": "text", "text": {"content": text.plain()}}
        params: dict[str, str] = {}
        if endpoint.secret:
            timestamp = int(now * 1000)
            sign = dingtalk_sign(endpoint.secret, timestamp)
            params = {"timestamp": str(timestamp), "sign": sign}
        return RobotRequest(dict(body), params)

    def outcome(self, response: httpx.Response) -> Result:
        answer = json_answer(response)
        if response.status_code != 200 or answer is None or "errcode" not in answer:
            return Result.permanent(f"DingTalk answered {response.status_code}: {quoted(response)}")
        code, message = answer["errcode"], answer.get("errmsg", "")
        if code == SENT:
            return Result.sent()
        if code == TOO_FAST:
            return Result.deferred(f"DingTalk: {code} {message}", retry_after=THROTTLED_SECONDS)
        if code == BUSY:
            return Result.transient(f"DingTalk: {code} {message}")
        if code == SECURITY:
            return Result.permanent(
                f"DingTalk refused the message (keywords, signature or IP allow-list): {message}"
            )
        return Result.permanent(f"DingTalk: {code} {message}")
