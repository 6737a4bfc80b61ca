"""The webhook channel's rig: a local receiver that verifies with the `standardwebhooks` library."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager

from channels.base import EndpointTarget, OutboundDelivery
from channels.webhook import WebhookChannel
from shared.settings import Settings
from shared.standard_webhooks import generate_secret
from tests.channel_harness import Answer, Rig, context_for, delivery_for
from tests.webhook_receivers import WebhookReceiver

CHANNEL = "webhook"
SUPPORTS = frozenset(Answer)
#: The client's timeout here: the receiver's TIMEOUT answer holds far longer.
TIMEOUT_SECONDS = 1.0


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    # The receiver listens on loopback, which the guard refuses unless it is allowed.
    allowed = settings.with_overrides(outbound_allow=(ipaddress.ip_network("127.0.0.1/32"),))
    with WebhookReceiver(generate_secret()) as receiver:
        channel = WebhookChannel(context_for(allowed, CHANNEL), timeout=TIMEOUT_SECONDS)
        assert receiver.secret is not None
        endpoint = EndpointTarget("orders", "webhook", receiver.url, receiver.secret)

        def delivery() -> OutboundDelivery:
            return delivery_for(CHANNEL, user_id=None, address="orders", endpoint=endpoint)

        def check_sent(sent: OutboundDelivery) -> None:
            (request,) = receiver.for_delivery(sent.delivery_id)
            assert request.verified, request.error
            assert request.headers["content-type"] == "application/json"
            assert request.payload == {
                "id": sent.delivery_id,
                "message_id": sent.message_id,
                "app": sent.app_id,
                "category": "notification",
                "title": "Hello",
                "body": "World",
                "url": None,
                "data": {"k": 1},
                "created_at": sent.created_at.isoformat(),
            }

        try:
            yield Rig(channel, receiver, delivery, check_sent)
        finally:
            channel.close()
