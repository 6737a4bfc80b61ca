"""Web Push: a notification to a browser's push subscription (RFC 8030, 8291, 8292).

The payload (`title`, `body`, `url`, `data` as JSON) is encrypted for the subscription as
RFC 8291 `aes128gcm` with a fresh sender key and salt per request, and POSTed to the
subscription's endpoint with `TTL`, `Urgency` and the VAPID `Authorization` (`channels.vapid`).

The endpoint came from an app, so it is called through the private-address guard
(`shared.outbound`), which refuses it for good unless `[outbound] allow` opens its address.
All push services share one provider account, `webpush`: its rate (`[webpush] rate`), the
pause a 429 with `Retry-After` asks for, and its breaker. A push service answers 201 for a
message it took; 404 and 410 say the subscription is gone (the worker removes the device).
"""

from __future__ import annotations

import json
import os

import http_ece
import httpx
import structlog
from cryptography.hazmat.primitives.asymmetric import ec

from channels.accounts import send_through
from channels.base import ChannelContext, DeviceTarget, OutboundDelivery, Result
from channels.vapid import VapidKey, b64url_decode, origin_of, public_key_of
from shared.config_file import Account
from shared.outbound import OutboundRefused, outbound_client
from shared.retry_after import retry_after_seconds

log = structlog.get_logger(__name__)

#: Push services must accept 4096 bytes of encrypted payload (RFC 8030 section 7.2).
MAX_BODY_BYTES = 4096
#: How long a push service keeps a message for a browser that is offline.
TTL_SECONDS = 24 * 3600
#: When a 429 does not say how long to wait.
DEFAULT_SLOW_DOWN_SECONDS = 30.0
_URGENCY = {"high": "high", "normal": "normal", "low": "low"}
_SENT = frozenset({200, 201, 202})
_GONE = frozenset({404, 410})


def encrypted_body(payload: bytes, p256dh: bytes, auth: bytes) -> bytes:
    """`payload` encrypted for the subscription keys (RFC 8291 `aes128gcm`, one record)."""
    return bytes(
        http_ece.encrypt(
            payload,
            salt=os.urandom(16),
            private_key=ec.generate_private_key(ec.SECP256R1()),
            dh=public_key_of(p256dh),
            auth_secret=auth,
            version="aes128gcm",
        )
    )


class Sender:
    """Sends to `webpush` devices; see the module docstring."""

    platform = "webpush"

    def __init__(self, context: ChannelContext) -> None:
        self.context = context
        config = context.settings.config.webpush
        self.subject = config.vapid_subject
        self.account = Account(name="webpush", provider="webpush", rate=config.rate)
        self.key: VapidKey | None = None
        if config.vapid_private_key:
            try:
                self.key = VapidKey.load(config.vapid_private_key)
            except ValueError as error:
                # Not fatal to the push channel: FCM and APNs devices still get theirs.
                log.error("webpush.bad_vapid_key", detail=str(error))
        self.client = outbound_client(context.outbound, timeout=config.timeout)

    @property
    def configured(self) -> bool:
        return self.key is not None

    def send(self, device: DeviceTarget, delivery: OutboundDelivery) -> Result:
        subscription = device.subscription or {}
        try:
            endpoint = str(subscription["endpoint"])
            keys = subscription["keys"]
            p256dh, auth = b64url_decode(keys["p256dh"]), b64url_decode(keys["auth"])
            payload = json.dumps(delivery.part(("title", "body", "url", "data"))).encode()
            body = encrypted_body(payload, p256dh, auth)
        except (KeyError, TypeError, ValueError, http_ece.ECEException) as error:
            return Result.permanent(f"webpush subscription unusable: {type(error).__name__}")
        if len(body) > MAX_BODY_BYTES:
            return Result.permanent(
                f"webpush payload is {len(body)} bytes encrypted, over {MAX_BODY_BYTES}"
            )
        headers = {
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(TTL_SECONDS),
            "Urgency": _URGENCY.get(delivery.priority, "normal"),
        }
        return send_through(
            self.context.accounts,
            [self.account],
            lambda _account: self._post(device, endpoint, headers, body),
        )

    def _post(
        self, device: DeviceTarget, endpoint: str, headers: dict[str, str], body: bytes
    ) -> Result:
        assert self.key is not None  # the push channel sends only when configured
        origin = origin_of(endpoint)
        try:
            authorization = self.key.authorization(endpoint, self.subject)
            response = self.client.post(
                endpoint, content=body, headers={**headers, "Authorization": authorization}
            )
        except OutboundRefused as refused:
            return Result.permanent(f"webpush endpoint refused: {refused}")
        except httpx.TimeoutException:
            return Result.transient(f"webpush {origin} did not answer in time")
        except (httpx.HTTPError, OSError) as error:
            return Result.transient(f"webpush {origin} unreachable: {type(error).__name__}")
        return self._result(device, origin, response)

    @staticmethod
    def _result(device: DeviceTarget, origin: str, response: httpx.Response) -> Result:
        status = response.status_code
        if status in _SENT:
            return Result.sent()
        if status in _GONE:
            return Result.permanent(
                f"webpush {origin}: subscription gone ({status})", gone_devices=(device.id,)
            )
        if status == 429:
            wait = retry_after_seconds(
                response.headers.get("Retry-After"), DEFAULT_SLOW_DOWN_SECONDS
            )
            return Result.deferred(f"webpush {origin}: slow down (429)", retry_after=wait)
        if status >= 500:
            return Result.transient(f"webpush {origin}: {status}")
        return Result.permanent(f"webpush {origin}: {status} {_reason(response)}".rstrip())

    def close(self) -> None:
        self.client.close()


def _reason(response: httpx.Response) -> str:
    """A short word from the push service on why it refused (its body, trimmed)."""
    return " ".join(response.text[:200].split())
