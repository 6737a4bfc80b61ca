"""The SMS providers behind the `sms` channel: one module per provider, one attempt each.

A provider object holds one configured account (`[[sms.accounts]]`) and its HTTP client (one
per account, so its connections are kept alive across sends). `send` makes one attempt for one
phone number and classifies the answer as a `Result`; it never raises. Choosing an account,
failing over and honouring slow-downs is the channel's work (`channels.accounts.send_through`).

What every HTTP provider shares is here: 2xx is sent, 429 slows the account down for its
`Retry-After`, 5xx and timeouts are transient, any other 4xx is permanent. Details never hold a
phone number or a credential: they end up in logs and in the delivery's `last_error`.

Providers are imported only when an account names them, as kombu picks a transport by scheme.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

import httpx
import structlog

from channels.base import Result
from shared.config_file import Account, seconds_of
from shared.retry_after import retry_after_seconds

log = structlog.get_logger(__name__)

#: `timeout` of an account that sets none: connect, write and the wait for the answer, each.
#: Well under the worker's claim (`CLAIM_SECONDS`), so a hanging account fails over before
#: another worker may take the claim over.
DEFAULT_TIMEOUT = "5s"
#: How long a 429 without a usable `Retry-After` pauses the account.
DEFAULT_SLOW_DOWN_SECONDS = 1.0

_PROVIDERS = {
    "twilio": "channels.sms_providers.twilio:TwilioProvider",
    "aliyun": "channels.sms_providers.aliyun:AliyunProvider",
    "http": "channels.sms_providers.http:HttpProvider",
}


class SmsProvider(ABC):
    """One account of one SMS provider; subclasses implement `attempt`."""

    def __init__(self, account: Account) -> None:
        self.account = account
        timeout = seconds_of(str(account.options.get("timeout", DEFAULT_TIMEOUT)))
        self.client = httpx.Client(timeout=timeout)

    def send(self, to: str, text: str, delivery_id: str) -> Result:
        """One attempt to send `text` to `to` (E.164); what `attempt` raises is transient."""
        provider = self.account.provider
        try:
            return self.attempt(to, text, delivery_id)
        except httpx.TimeoutException:
            return Result.transient(f"{provider}: no answer in time")
        except Exception as error:
            # A transport error, or a bug that must not escape the contract either. Only the
            # type is kept: an error's text may quote the request (its number, its keys).
            if not isinstance(error, httpx.HTTPError):
                log.error("sms.provider_raised", provider=provider, error=type(error).__name__)
            return Result.transient(f"{provider}: {type(error).__name__}")

    @abstractmethod
    def attempt(self, to: str, text: str, delivery_id: str) -> Result:
        """Call the provider once and classify its answer; may raise (see `send`)."""

    def close(self) -> None:
        self.client.close()


def open_provider(account: Account) -> SmsProvider:
    """The provider object of `account`, its module imported now."""
    module_name, _, class_name = _PROVIDERS[account.provider].partition(":")
    provider_class: type[SmsProvider] = getattr(importlib.import_module(module_name), class_name)
    return provider_class(account)


def http_result(provider: str, response: httpx.Response, sent_detail: str | None) -> Result:
    """The outcome of a provider's plain HTTP answer (see the module docstring)."""
    status = response.status_code
    if 200 <= status < 300:
        return Result.sent(sent_detail)
    if status == 429:
        return slow_down(
            provider,
            retry_after_seconds(response.headers.get("Retry-After"), DEFAULT_SLOW_DOWN_SECONDS),
        )
    if status >= 500:
        return Result.transient(f"{provider} answered {status}")
    return Result.permanent(f"{provider} answered {status}")


def slow_down(provider: str, seconds: float) -> Result:
    """The provider asks for fewer sends: the account pauses, the delivery is not charged."""
    return Result.deferred(f"{provider} asked to slow down", retry_after=seconds)
