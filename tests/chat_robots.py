"""Local stand-ins for the chat robots' webhook servers, checking requests as each vendor does.

A `RobotServer` is a real HTTP/1.1 server on 127.0.0.1 behind a `FaultProxy` (which makes it
hang or refuse connections). Each vendor's subclass checks a request as the vendor documents it:
the URL's token or key, the signature of the robot's secret (computed here independently of the
adapter) and its timestamp window, the message's JSON fields. A request that fails a check is
answered with the vendor's own error and kept in `refusals`; one that passes is kept in
`received` when the server answers OK. `answer(mode)` makes it answer the next requests as the
vendor would for a `tests.channel_harness.Answer` (a slow-down and a refused robot in the
vendor's own codes).

`robot_rig` wires the chat channel to one of them for the shared channel harness.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from channels.base import EndpointTarget, OutboundDelivery
from channels.chat import ChatChannel
from shared.settings import Settings
from tests.channel_harness import Answer, Rig, context_for, delivery_for
from tests.proxied_server import ProxiedHttpServer

#: Vendors refuse a signature whose timestamp is further than this from their clock.
SIGNATURE_WINDOW_SECONDS = 3600
#: How long the channel waits for a robot in the harness (the TIMEOUT answer waits this long).
RIG_TIMEOUT_SECONDS = 0.5
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)

#: A reply: HTTP status, headers and body.
Reply = tuple[int, dict[str, str], bytes]


def json_reply(body: dict[str, Any], status: int = 200) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


def text_reply(body: str, status: int = 200, **headers: str) -> Reply:
    return status, {"Content-Type": "text/plain", **headers}, body.encode()


@dataclass(frozen=True)
class Received:
    """One request that passed the vendor's checks."""

    query: dict[str, str]
    body: dict[str, Any]

    def says(self, text: str) -> bool:
        """Whether `text` appears in the message's JSON (titles, bodies, links)."""
        return text in json.dumps(self.body, ensure_ascii=False)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        robot: RobotServer = self.server.robot  # type: ignore[attr-defined]
        status, headers, body = robot.handle(self.path, self.headers.get("Content-Type", ""), raw)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `received` and `refusals` instead."""


class RobotServer(ProxiedHttpServer):
    """A vendor's webhook server; subclasses check requests and answer as the vendor does."""

    kind: ClassVar[str]
    #: The path of the robot's webhook URL (with its query, where the vendor puts a token).
    path: ClassVar[str]

    def __init__(self, secret: str | None = None) -> None:
        super().__init__(_Handler)
        self.secret = secret
        self.received: list[Received] = []
        self.refusals: list[str] = []
        self._lock = threading.Lock()
        self.http.robot = self  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return f"http://{self.proxy.address}{self.path}"

    @property
    def connections(self) -> int:
        """How many TCP connections clients have opened to the server so far."""
        return self.proxy.accepted

    def handle(self, target: str, content_type: str, raw: bytes) -> Reply:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query))
        body: Any = None
        if parts.path != urlsplit(self.path).path:
            problem: str | None = f"no robot at {parts.path}"
        elif not content_type.startswith("application/json"):
            problem = f"Content-Type {content_type!r} is not JSON"
        else:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            problem = "the body is not a JSON object" if not isinstance(body, dict) else None
        problem = problem or self.check(query, body)
        with self._lock:
            if problem is not None:
                self.refusals.append(problem)
                return self.refuse(problem)
            if self.mode is Answer.OK:
                self.received.append(Received(query, body))
        return self.reply(self.mode)

    def check(self, query: dict[str, str], body: dict[str, Any]) -> str | None:
        """What the vendor would refuse in this request (None when nothing)."""
        raise NotImplementedError

    def refuse(self, problem: str) -> Reply:
        """The vendor's answer to a request that fails its checks."""
        raise NotImplementedError

    def reply(self, mode: Answer) -> Reply:
        """The vendor's answer to a valid request in `mode` (OK, SLOW_DOWN, SERVER_ERROR,
        REJECT_ADDRESS)."""
        raise NotImplementedError

    def signed_in_window(self, timestamp: str | None, scale: int) -> str | None:
        """Why a signature's timestamp (in 1/`scale` seconds) is refused (None when it is not)."""
        if timestamp is None or not timestamp.isdigit():
            return "no timestamp"
        if abs(int(timestamp) / scale - time.time()) > SIGNATURE_WINDOW_SECONDS:
            return "timestamp is not within one hour from current time"
        return None


def _strings(value: object, *keys: str) -> bool:
    """Whether `value` is an object whose `keys` are all non-empty strings."""
    return isinstance(value, dict) and all(isinstance(value.get(k), str) and value[k] for k in keys)


class SlackServer(RobotServer):
    """Slack's incoming webhook: `text` and `blocks`, answered `ok` or a status and code."""

    kind = "slack"
    path = "/services/T0001/B0001/XXXXXXXXXXXXXXXXXXXXXXXX"

    def check(self, query: dict[str, str], body: dict[str, Any]) -> str | None:
        if not _strings(body, "text"):
            return "no text"
        blocks = body.get("blocks", [])
        if not isinstance(blocks, list) or not all(_strings(b, "type") for b in blocks):
            return "blocks must be a list of typed blocks"
        for block in blocks:
            text = block.get("text", {})
            if block["type"] == "header" and (
                text.get("type") != "plain_text" or len(text.get("text", "")) > 150
            ):
                return "a header is plain_text of at most 150 characters"
            if block["type"] == "section" and (
                text.get("type") not in ("mrkdwn", "plain_text") or len(text.get("text", "")) > 3000
            ):
                return "a section's text is mrkdwn or plain_text of at most 3000 characters"
        return None

    def refuse(self, problem: str) -> Reply:
        return text_reply("invalid_payload", 400)

    def reply(self, mode: Answer) -> Reply:
        if mode is Answer.SLOW_DOWN:
            return text_reply("rate_limited", 429, **{"Retry-After": "2"})
        if mode is Answer.SERVER_ERROR:
            return text_reply("rollup_error", 500)
        if mode is Answer.REJECT_ADDRESS:
            return text_reply("no_service", 404)
        return text_reply("ok")


class DingTalkServer(RobotServer):
    """DingTalk's custom robot: `access_token`, and `timestamp` + `sign` with a secret."""

    kind = "dingtalk"
    path = "/robot/send?access_token=dt-token-123"

    def check(self, query: dict[str, str], body: dict[str, Any]) -> str | None:
        if query.get("access_token") != "dt-token-123":
            return "token is not exist"
        if self.secret is not None:
            late = self.signed_in_window(query.get("timestamp"), 1000)
            if late:
                return late
            string_to_sign = f"{query['timestamp']}\n{self.secret}".encode()
            digest = hmac.new(self.secret.encode(), string_to_sign, hashlib.sha256).digest()
            if query.get("sign") != base64.b64encode(digest).decode():
                return "sign not match"
        msgtype = body.get("msgtype")
        if msgtype == "text" and _strings(body.get("text"), "content"):
            return None
        if msgtype == "markdown" and _strings(body.get("markdown"), "title", "text"):
            return None
        return "msgtype text needs text.content, markdown needs markdown.title and .text"

    def refuse(self, problem: str) -> Reply:
        if problem in ("sign not match", "no timestamp") or "timestamp" in problem:
            return json_reply({"errcode": 310000, "errmsg": problem})
        if problem == "token is not exist":
            return json_reply({"errcode": 300001, "errmsg": problem})
        return json_reply({"errcode": 40035, "errmsg": "缺少参数 json"})

    def reply(self, mode: Answer) -> Reply:
        if mode is Answer.SLOW_DOWN:
            errmsg = "send too fast, exceed 20 times per minute"
            return json_reply({"errcode": 130101, "errmsg": errmsg})
        if mode is Answer.SERVER_ERROR:
            return json_reply({"errcode": -1, "errmsg": "系统繁忙"})
        if mode is Answer.REJECT_ADDRESS:
            return json_reply({"errcode": 310000, "errmsg": "keywords not in content"})
        return json_reply({"errcode": 0, "errmsg": "ok"})


class FeishuServer(RobotServer):
    """Feishu's custom bot: `msg_type` and `content`, and `timestamp` + `sign` with a secret."""

    kind = "feishu"
    path = "/open-apis/bot/v2/hook/0b1c2d3e-feed-4bad-beef-000000000001"

    def check(self, query: dict[str, str], body: dict[str, Any]) -> str | None:
        if self.secret is not None:
            late = self.signed_in_window(body.get("timestamp"), 1)
            if late:
                return late
            key = f"{body['timestamp']}\n{self.secret}".encode()
            expected = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
            if body.get("sign") != expected:
                return "sign match fail"
        content = body.get("content")
        msg_type = body.get("msg_type")
        if msg_type == "text" and _strings(content, "text"):
            return None
        if msg_type == "post" and isinstance(content, dict):
            posts = content.get("post")
            if isinstance(posts, dict) and posts and all(_post(p) for p in posts.values()):
                return None
        return "content does not match msg_type"

    def refuse(self, problem: str) -> Reply:
        if "sign" in problem or "timestamp" in problem:
            msg = "sign match fail or timestamp is not within one hour from current time"
            return json_reply({"code": 19021, "data": {}, "msg": msg}, 400)
        return json_reply({"code": 9499, "data": {}, "msg": "Bad Request"}, 400)

    def reply(self, mode: Answer) -> Reply:
        if mode is Answer.SLOW_DOWN:
            return json_reply({"code": 11232, "data": {}, "msg": "frequency limited"}, 400)
        if mode is Answer.SERVER_ERROR:
            return text_reply("Bad Gateway", 502)
        if mode is Answer.REJECT_ADDRESS:
            return json_reply({"code": 19024, "data": {}, "msg": "Key Words Not Found"}, 400)
        return json_reply({"code": 0, "data": {}, "msg": "success"})


def _post(post: object) -> bool:
    """A rich-text post of one language: a title and lines of tagged elements."""
    if not isinstance(post, dict) or not isinstance(post.get("title"), str):
        return False
    lines = post.get("content")
    return isinstance(lines, list) and all(
        isinstance(line, list) and all(_strings(e, "tag") for e in line) for line in lines
    )


class WeComServer(RobotServer):
    """WeCom's group robot: `key` in the URL, a `text` or `markdown` message, errcode answers."""

    kind = "wecom"
    path = "/cgi-bin/webhook/send?key=693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"

    def check(self, query: dict[str, str], body: dict[str, Any]) -> str | None:
        if query.get("key") != "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa":
            return "invalid webhook url"
        msgtype = body.get("msgtype")
        part = body.get(msgtype) if isinstance(msgtype, str) else None
        limits = {"text": 2048, "markdown": 4096}
        if msgtype not in limits or not _strings(part, "content"):
            return "invalid message type"
        assert isinstance(part, dict) and isinstance(msgtype, str)
        if len(part["content"].encode()) > limits[msgtype]:
            return "content exceed max length"
        return None

    def refuse(self, problem: str) -> Reply:
        codes = {"invalid webhook url": 93000, "content exceed max length": 40058}
        return json_reply({"errcode": codes.get(problem, 40008), "errmsg": problem})

    def reply(self, mode: Answer) -> Reply:
        if mode is Answer.SLOW_DOWN:
            return json_reply({"errcode": 45009, "errmsg": "api freq out of limit"})
        if mode is Answer.SERVER_ERROR:
            return json_reply({"errcode": -1, "errmsg": "system busy"})
        if mode is Answer.REJECT_ADDRESS:
            return json_reply({"errcode": 93000, "errmsg": "invalid webhook url"})
        return json_reply({"errcode": 0, "errmsg": "ok"})


def chat_delivery(endpoint: EndpointTarget, **changes: Any) -> OutboundDelivery:
    """A delivery to `endpoint` on the chat channel whose body names its delivery id."""
    base = delivery_for("chat", user_id=None, address=endpoint.name, endpoint=endpoint)
    content = {
        "title": "Order shipped",
        "body": f"Parcel for delivery {base.delivery_id} is on its way",
        "url": "https://shop.example/orders/42",
        "data": {},
    }
    return replace(base, content=content, **changes)


def chat_channel(settings: Settings, allow_loopback: bool = True) -> ChatChannel:
    """The chat channel on `settings`, the private-address guard opened for 127.0.0.1 (or not)."""
    if allow_loopback:
        settings = settings.with_overrides(outbound_allow=LOOPBACK)
    return ChatChannel(context_for(settings, "chat"), timeout=RIG_TIMEOUT_SECONDS)


@contextmanager
def robot_rig(server: RobotServer, settings: Settings) -> Iterator[Rig]:
    """The harness's rig of the chat channel sending to `server` (started and stopped here)."""
    with server:
        channel = chat_channel(settings)
        endpoint = EndpointTarget("team-room", server.kind, server.url, server.secret)

        def check_sent(delivery: OutboundDelivery) -> None:
            assert server.refusals == []
            assert any(r.says(delivery.delivery_id) for r in server.received), server.received
            assert any(r.says("Order shipped") for r in server.received)

        try:
            yield Rig(channel, server, lambda: chat_delivery(endpoint), check_sent)
        finally:
            channel.close()
