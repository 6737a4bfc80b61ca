"""The SMS channel: a text to a phone number through the operator's provider accounts.

The accounts are `[[sms.accounts]]` (Twilio, Alibaba Cloud, or a generic HTTP gateway; see
`channels.sms_providers`). Each delivery goes through `channels.accounts.send_through`: accounts
in weighted random order, skipping those paused by a provider's 429, over their `rate`, or behind
an open breaker, failing over to the next on a transient failure or a slow-down, and deferring
the delivery when no account may be called now.

The text is the message's rendered `sms` part (`text`), or else its content's `body`. A batch is
sent on `send_threads` threads: each send is one round trip to a provider.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace

import structlog

from channels.accounts import send_through
from channels.base import Channel, ChannelContext, OutboundDelivery, Outcome, Result
from channels.sms_providers import SmsProvider, open_provider
from shared.config_file import Account
from shared.masking import mask_address
from shared.settings import Settings

log = structlog.get_logger(__name__)


class SmsChannel(Channel):
    """Sends each delivery's text to its phone number; see the module docstring.

    `chooser` orders the accounts by weight (a seeded one makes the order repeatable).
    """

    name = "sms"
    reaches = frozenset({"phone"})
    address_kind = "phone"
    send_threads = 16

    def __init__(self, context: ChannelContext, chooser: random.Random | None = None) -> None:
        super().__init__(context)
        self.accounts: tuple[Account, ...] = context.settings.config.sms_accounts
        self.providers: dict[str, SmsProvider] = {a.name: open_provider(a) for a in self.accounts}
        self.chooser = chooser or random.Random()

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        return bool(settings.config.sms_accounts)

    def send(self, delivery: OutboundDelivery) -> Result:
        to = delivery.address
        if not to:
            return Result.permanent("the delivery has no phone number")
        part = delivery.part(("text", "body"))
        text = part["text"] or part["body"]
        if not text:
            return Result.permanent("the message has no text for SMS")
        return send_through(
            self.context.accounts,
            self.accounts,
            lambda account: self._attempt(account, delivery, to, str(text)),
            self.chooser,
        )

    def _attempt(self, account: Account, delivery: OutboundDelivery, to: str, text: str) -> Result:
        started = time.monotonic()
        result = self.providers[account.name].send(to, text, delivery.delivery_id)
        (log.info if result.outcome is Outcome.SENT else log.warning)(
            "sms.attempt",
            app=delivery.app_id,
            message_id=delivery.message_id,
            delivery_id=delivery.delivery_id,
            channel=self.name,
            account=account.name,
            provider=account.provider,
            to=mask_address(to),
            status=result.outcome.value,
            detail=result.detail,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        # The account's name leads the detail: it is what an operator looks at first.
        detail = f"{account.name}: {result.detail}" if result.detail else account.name
        return replace(result, detail=detail)

    def close(self) -> None:
        for provider in self.providers.values():
            provider.close()
