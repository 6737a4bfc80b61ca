"""The webhook channel: the notification as JSON to an app's webhook endpoint, signed.

Each request is signed as Standard Webhooks specifies (`shared.standard_webhooks`), with the
delivery id as `webhook-id` so that a receiver can drop a retry it already has. It goes through
the outbound guard at call time (`channels.endpoint_http`) on one keep-alive client. Each
endpoint is a provider account of its own (`channels.accounts`): its 429 pauses only it, and its
breaker opens on its own failures.
"""

from __future__ import annotations

import json

from channels.accounts import send_through
from channels.base import Channel, ChannelContext, OutboundDelivery, Result
from channels.endpoint_http import post_json
from shared.config_file import Account
from shared.notifications import notification_payload
from shared.outbound import outbound_client
from shared.standard_webhooks import signed_headers

DEFAULT_TIMEOUT_SECONDS = 10.0


def webhook_body(delivery: OutboundDelivery) -> bytes:
    """What a webhook receives: the notification of the contract, with its app."""
    content = delivery.part(("title", "body", "url", "data"))
    payload = notification_payload(
        delivery.delivery_id,
        delivery.message_id,
        content,
        delivery.category,
        delivery.created_at,
    )
    payload["app"] = delivery.app_id
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class WebhookChannel(Channel):
    """POSTs to endpoints of kind `webhook`; see the module docstring."""

    name = "webhook"
    reaches = frozenset({"endpoint"})
    serves_users = False
    address_kind = "endpoint"

    def __init__(self, context: ChannelContext, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        super().__init__(context)
        self._client = outbound_client(context.outbound, timeout=timeout)

    def send(self, delivery: OutboundDelivery) -> Result:
        endpoint = delivery.endpoint
        if endpoint is None:
            return Result.permanent(f"the app has no endpoint {delivery.address!r}")
        if endpoint.kind != "webhook":
            return Result.permanent(f"endpoint {endpoint.name!r} is a {endpoint.kind} robot")
        if not endpoint.secret:
            return Result.permanent(f"endpoint {endpoint.name!r} has no signing secret")
        body = webhook_body(delivery)
        try:
            headers = signed_headers(endpoint.secret, delivery.delivery_id, body)
        except ValueError as error:
            return Result.permanent(f"endpoint {endpoint.name!r}: {error}")
        account = Account(name=f"{delivery.app_id}/{endpoint.name}", provider="webhook")
        return send_through(
            self.context.accounts,
            [account],
            lambda _account: post_json(self._client, endpoint.url, body, headers),
        )

    def close(self) -> None:
        self._client.close()
