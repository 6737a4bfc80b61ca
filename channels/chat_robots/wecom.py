"""WeCom (企业微信) group robots: a JSON POST of a `markdown` (or `text`) message.

The robot's URL carries its `key` and that is all its security: WeCom robots have no signing
secret. WeCom answers HTTP 200 with `{"errcode", "errmsg"}`: 0 is sent; 45009 is its frequency
limit (20 messages a minute); -1 is "system busy"; 93000 an invalid webhook key, and every other
code a request that will never pass as it is. A markdown message holds at most 4096 bytes of
UTF-8 and a text one 2048: longer ones are cut to fit.
"""

from __future__ import annotations

import httpx

from channels.base import EndpointTarget, Result
from channels.chat_robots import ChatText, RobotRequest, json_answer, lines_fitting, quoted

SENT, FREQUENCY, BUSY, INVALID_KEY = 0, 45009, -1, 93000
MARKDOWN_BYTES, TEXT_BYTES = 4096, 2048
#: How long a robot over its frequency limit is left alone: its window is a minute.
LIMITED_SECONDS = 60.0


class WeComRobot:
    """WeCom's group robot (`https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...`)."""

    kind = "wecom"
    name = "WeCom"

    def request(self, endpoint: EndpointTarget, text: ChatText, now: float) -> RobotRequest:
        if text.title:
            link = f"[{text.url}]({text.url})" if text.url else None
            content = lines_fitting(f"**{text.title}**", text.body, link, MARKDOWN_BYTES)
            return RobotRequest({"msgtype": "markdown", "markdown": {"content": content}})
        plain = lines_fitting(None, text.body, text.url, TEXT_BYTES)
        return RobotRequest({"msgtype": "text", "text": {"content": plain}})

    def outcome(self, response: httpx.Response) -> Result:
        answer = json_answer(response)
        if response.status_code != 200 or answer is None or "errcode" not in answer:
            return Result.permanent(f"WeCom answered {response.status_code}: {quoted(response)}")
        code, message = answer["errcode"], answer.get("errmsg", "")
        if code == SENT:
            return Result.sent()
        if code == FREQUENCY:
            return Result.deferred(f"WeCom: {code} {message}", retry_after=LIMITED_SECONDS)
        if code == BUSY:
            return Result.transient(f"WeCom: {code} {message}")
        if code == INVALID_KEY:
            return Result.permanent(f"WeCom: the webhook key is not valid ({message})")
        return Result.permanent(f"WeCom: {code} {message}")
