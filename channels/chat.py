"""The chat channel: a notification posted to an app's chat robot (Slack, DingTalk, Feishu, WeCom).

A message reaches a robot with `"to": [{"endpoint": name}]`: the worker resolves the app's
endpoint, and the endpoint's `kind` picks the robot module (`channels.chat_robots`) that builds
the vendor's request and reads its answer. A `webhook` endpoint belongs to the webhook channel;
given to chat it fails for good, saying so.

The URL is the app's, so every call goes through the private-address guard's client (one
keep-alive client for the channel). Each endpoint is a provider account of its own on the
AccountGate (`{app}:{name}`): a vendor's "too fast" pauses that robot for every worker, and a
robot that keeps failing opens its breaker, without holding up the app's other robots.
"""

from __future__ import annotations

import time

from channels.accounts import send_through
from channels.base import Channel, ChannelContext, EndpointTarget, OutboundDelivery, Result
from channels.chat_robots import ChatText, Robot, post_json
from channels.chat_robots.dingtalk import DingTalkRobot
from channels.chat_robots.feishu import FeishuRobot
from channels.chat_robots.slack import SlackRobot
from channels.chat_robots.wecom import WeComRobot
from shared.config_file import Account
from shared.outbound import outbound_client

DEFAULT_TIMEOUT_SECONDS = 10.0


def chat_text(delivery: OutboundDelivery) -> ChatText:
    """The title, body and link of the message's rendered `chat` part, or of its content."""
    part = delivery.part(("title", "body", "url"))
    return ChatText(
        title=str(part["title"]) if part["title"] else None,
        body=str(part["body"] or ""),
        url=str(part["url"]) if part["url"] else None,
    )


def endpoint_account(delivery: OutboundDelivery, endpoint: EndpointTarget) -> Account:
    """The endpoint as a provider account of the gate: one per (app, endpoint name)."""
    return Account(name=f"{delivery.app_id}:{endpoint.name}", provider=endpoint.kind)


class ChatChannel(Channel):
    """Posts each delivery to its endpoint's robot; see the module docstring."""

    name = "chat"
    reaches = frozenset({"endpoint"})
    serves_users = False
    address_kind = "endpoint"

    def __init__(self, context: ChannelContext, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        super().__init__(context)
        robots: tuple[Robot, ...] = (SlackRobot(), DingTalkRobot(), FeishuRobot(), WeComRobot())
        self._robots = {robot.kind: robot for robot in robots}
        self._client = outbound_client(context.outbound, timeout=timeout)

    def send(self, delivery: OutboundDelivery) -> Result:
        endpoint = delivery.endpoint
        if endpoint is None:
            return Result.permanent(f"the app has no endpoint {delivery.address!r}")
        if endpoint.kind == "webhook":
            return Result.permanent(
                f"endpoint {endpoint.name!r} is a webhook, not a chat robot: "
                "send it on the webhook channel"
            )
        robot = self._robots.get(endpoint.kind)
        if robot is None:
            known = ", ".join(sorted(self._robots))
            return Result.permanent(
                f"endpoint {endpoint.name!r} is of kind {endpoint.kind!r}; chat robots: {known}"
            )
        text = chat_text(delivery)
        if not (text.title or text.body):
            return Result.permanent("the message has no title or body to post")
        robot_request = robot.request(endpoint, text, time.time())
        return send_through(
            self.context.accounts,
            [endpoint_account(delivery, endpoint)],
            lambda _account: post_json(self._client, robot, endpoint.url, robot_request),
        )

    def close(self) -> None:
        self._client.close()
