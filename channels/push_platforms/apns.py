"""APNs: one alert to one Apple device, over HTTP/2 with token-based authentication.

Every request carries a provider token: a JWT signed ES256 with the team's `.p8` key
(`kid` = key id, `iss` = team id, `iat`). Apple refuses tokens renewed more than about once in
20 minutes and older than an hour, so one token is reused for up to 50 minutes.
"""

from __future__ import annotations

import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt

from channels.accounts import send_through
from channels.base import ChannelContext, DeviceTarget, OutboundDelivery, Result
from shared.config_file import Account
from shared.retry_after import retry_after_seconds

TOKEN_LIFETIME_SECONDS = 50 * 60
# APNs sends no Retry-After with its 429: wait this long before calling the account again.
DEFAULT_RETRY_AFTER = 5.0
# Reasons that mean the device token is no longer (or never was) valid. Not
# DeviceTokenNotForTopic: a wrong `[apns] topic` would answer that for every device.
GONE_REASONS = frozenset({"Unregistered", "BadDeviceToken"})


def reason_of(response: httpx.Response) -> str:
    """The `reason` of an APNs error answer ("" when it has none)."""
    try:
        return str(response.json().get("reason", ""))
    except ValueError:
        return ""


class Sender:
    """Sends alerts through APNs' provider API with a reused provider token."""

    platform = "apns"

    def __init__(self, context: ChannelContext) -> None:
        self.context = context
        self.config = context.settings.config.apns
        self.account = Account(name="apns", provider="apns", rate=self.config.rate)
        self._client: httpx.Client | None = None
        self._key: str | None = None
        self._token: str | None = None
        self._token_issued = 0.0

    @property
    def configured(self) -> bool:
        config = self.config
        return bool(config.key_file and config.key_id and config.team_id and config.topic)

    def _http(self) -> httpx.Client:
        if self._client is None:
            verify: ssl.SSLContext | bool = True
            if self.config.ca_file:
                verify = ssl.create_default_context(cafile=self.config.ca_file)
            self._client = httpx.Client(http2=True, timeout=self.config.timeout, verify=verify)
        return self._client

    def provider_token(self, fresh: bool = False) -> str:
        """The provider token, signed anew when there is none, it is 50 minutes old, or
        `fresh` asks for one (APNs called it expired)."""
        now = time.time()
        if not fresh and self._token and now - self._token_issued < TOKEN_LIFETIME_SECONDS:
            return self._token
        if self._key is None:
            self._key = Path(self.config.key_file or "").read_text(encoding="utf-8")
        claims = {"iss": self.config.team_id, "iat": int(now)}
        self._token = jwt.encode(
            claims, self._key, algorithm="ES256", headers={"kid": self.config.key_id}
        )
        self._token_issued = now
        return self._token

    def payload(self, delivery: OutboundDelivery) -> dict[str, Any]:
        """The notification's JSON: the alert in `aps`, the message's data beside it."""
        part = delivery.part(("title", "body", "data"))
        data = {str(k): v for k, v in (part["data"] or {}).items() if k != "aps"}
        alert = {"title": part["title"] or "", "body": part["body"] or ""}
        return {"aps": {"alert": alert}, **data}

    def send(self, device: DeviceTarget, delivery: OutboundDelivery) -> Result:
        if not device.token:
            return Result.permanent("the APNs device has no token", gone_devices=(device.id,))
        return send_through(
            self.context.accounts, [self.account], lambda _: self._attempt(device, delivery)
        )

    def _attempt(self, device: DeviceTarget, delivery: OutboundDelivery) -> Result:
        url = f"{self.config.base_url.rstrip('/')}/3/device/{device.token}"
        # The delivery id makes the apns-id: a retry of it is recognisably the same push.
        apns_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"omnipush:{delivery.delivery_id}"))
        try:
            response = self._post(url, apns_id, delivery, fresh=False)
            if response.status_code == 403 and reason_of(response) == "ExpiredProviderToken":
                response = self._post(url, apns_id, delivery, fresh=True)
        except httpx.HTTPError as error:
            return Result.transient(f"APNs unreachable: {type(error).__name__}")
        except (OSError, ValueError, jwt.PyJWTError) as error:
            return Result.permanent(f"the APNs signing key is unusable: {type(error).__name__}")
        return self._classify(device, response)

    def _post(
        self, url: str, apns_id: str, delivery: OutboundDelivery, fresh: bool
    ) -> httpx.Response:
        headers = {
            "authorization": f"bearer {self.provider_token(fresh=fresh)}",
            "apns-topic": self.config.topic or "",
            "apns-push-type": "alert",
            "apns-priority": "10" if delivery.priority == "high" else "5",
            "apns-id": apns_id,
        }
        return self._http().post(url, json=self.payload(delivery), headers=headers)

    def _classify(self, device: DeviceTarget, response: httpx.Response) -> Result:
        status = response.status_code
        if status == 200:
            return Result.sent("APNs accepted")
        reason = reason_of(response)
        detail = f"APNs answered {status} {reason}".strip()
        if status == 410 or reason in GONE_REASONS:
            return Result.permanent(detail, gone_devices=(device.id,))
        if status == 429:
            return Result.deferred(
                detail,
                retry_after=retry_after_seconds(
                    response.headers.get("retry-after"), DEFAULT_RETRY_AFTER
                ),
            )
        if status >= 500:
            return Result.transient(detail)
        return Result.permanent(detail)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
