"""The email channel's rig: a local aiosmtpd server that parses every mail it accepts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from channels.base import OutboundDelivery
from channels.registry import channel_class
from shared.settings import Settings
from tests.channel_harness import Answer, Rig, context_for, delivery_for
from tests.smtp_server import SmtpServer

CHANNEL = "email"
SUPPORTS = frozenset(Answer)
ADDRESS = "alice@example.com"
SENDER = "Shop <noreply@shop.example>"


def email_settings(settings: Settings, server: SmtpServer, **email: Any) -> Settings:
    """`settings` with `[email]` pointing at `server` (short timeout, its CA trusted)."""
    config = settings.config
    chosen = replace(
        config.email,
        smtp_url=server.url(),
        sender=SENDER,
        timeout=1.0,
        ca_file=str(server.ca_file) if server.ca_file else None,
    )
    return settings.with_overrides(config=replace(config, email=replace(chosen, **email)))


def email_delivery(**changes: object) -> OutboundDelivery:
    """A delivery of a plain notification to user `alice`, at her address."""
    return delivery_for(CHANNEL, **{"address": ADDRESS, **changes})


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    with SmtpServer() as server:
        via = email_settings(settings, server)
        channel = channel_class(CHANNEL)(context_for(via, CHANNEL))

        def check_sent(delivery: OutboundDelivery) -> None:
            (mail,) = server.by_message_id()[f"<{delivery.delivery_id}@shop.example>"]
            assert mail.mail_from == "noreply@shop.example"
            assert mail.recipients == (ADDRESS,)
            assert mail.message["To"] == ADDRESS
            assert mail.message["From"] == SENDER
            assert mail.message["Subject"] == "Hello"
            assert mail.message["Date"]
            assert mail.part("text/plain").strip() == "World"
            assert "World" in mail.part("text/html")

        try:
            yield Rig(channel, server, email_delivery, check_sent)
        finally:
            channel.close()
