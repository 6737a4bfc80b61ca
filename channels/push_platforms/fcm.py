"""FCM HTTP v1: a notification to an Android (or any FCM) registration token.

`[fcm] service_account_file` is the Firebase project's service account key (the JSON file the
console hands out: `project_id`, `client_email`, `private_key`, `token_uri`). Each send is
`POST {base_url}/v1/projects/{project_id}/messages:send` with an OAuth 2.0 access token,
which the sender obtains as Google documents for service accounts: a JWT signed RS256 with
the account's key, exchanged at `token_uri` (grant type `jwt-bearer`). The token is kept
until a minute before it expires, shared by the sending threads, and fetched again once
when FCM answers 401.

FCM is one provider account, `fcm`: its `rate`, the pause a 429 or 503 with `Retry-After`
asks for, and its breaker. A token FCM reports `UNREGISTERED` (404), or one of another
sender (403 `SENDER_ID_MISMATCH`), is gone: the worker removes the device.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import structlog

from channels.accounts import send_through
from channels.base import ChannelContext, DeviceTarget, OutboundDelivery, Result
from shared.config_file import Account
from shared.retry_after import retry_after_seconds

log = structlog.get_logger(__name__)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: A token is fetched again this long before Google says it expires.
TOKEN_MARGIN_SECONDS = 60.0
#: When a 429 or 503 does not say how long to wait.
DEFAULT_SLOW_DOWN_SECONDS = 30.0
_GONE_CODES = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})


@dataclass(frozen=True)
class ServiceAccount:
    """The parts of a service account key file that sending needs."""

    project_id: str
    client_email: str
    private_key: str
    token_uri: str

    @classmethod
    def load(cls, path: str) -> ServiceAccount:
        """The key file at `path`; ValueError naming what is wrong with it."""
        try:
            with open(path, encoding="utf-8") as file:
                raw = json.load(file)
            return cls(
                project_id=str(raw["project_id"]),
                client_email=str(raw["client_email"]),
                private_key=str(raw["private_key"]),
                token_uri=str(raw["token_uri"]),
            )
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror}") from None
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a service account key: {error!r}") from None


class AccessTokens:
    """The OAuth 2.0 access token of a service account, fetched when missing or stale."""

    def __init__(self, account: ServiceAccount, client: httpx.Client) -> None:
        self.account = account
        self.client = client
        self._lock = threading.Lock()
        self._token: str | None = None
        self._good_until = 0.0

    def current(self) -> str:
        """A token good for a minute at least; httpx or ValueError when Google will not say."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._good_until:
                self._token, lifetime = self._fetch()
                self._good_until = time.monotonic() + lifetime - TOKEN_MARGIN_SECONDS
            return self._token

    def forget(self, token: str) -> None:
        """`token` was refused: the next `current` fetches another."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self) -> tuple[str, float]:
        now = int(time.time())
        assertion = jwt.encode(
            {
                "iss": self.account.client_email,
                "scope": SCOPE,
                "aud": self.account.token_uri,
                "iat": now,
                "exp": now + 3600,
            },
            self.account.private_key,
            algorithm="RS256",
        )
        response = self.client.post(
            self.account.token_uri,
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": assertion,
            },
        )
        if response.status_code != 200:
            raise ValueError(f"the token endpoint answered {response.status_code}")
        answer = response.json()
        return str(answer["access_token"]), float(answer.get("expires_in", 3600))


def fcm_message(device: DeviceTarget, delivery: OutboundDelivery) -> dict[str, Any]:
    """The v1 `message` of one send: notification, string data, Android priority."""
    part = delivery.part(("title", "body", "url", "data"))
    data = {
        str(key): value if isinstance(value, str) else json.dumps(value)
        for key, value in (part["data"] or {}).items()
    }
    if part["url"]:
        data["url"] = str(part["url"])
    return {
        "token": device.token,
        "notification": {"title": part["title"] or "", "body": part["body"] or ""},
        "data": data,
        "android": {"priority": "high" if delivery.priority == "high" else "normal"},
    }


class Sender:
    """Sends to `fcm` devices; see the module docstring."""

    platform = "fcm"

    def __init__(self, context: ChannelContext) -> None:
        self.context = context
        config = context.settings.config.fcm
        self.base_url = config.base_url.rstrip("/")
        self.account = Account(name="fcm", provider="fcm", rate=config.rate)
        self.client = httpx.Client(timeout=config.timeout)
        self.tokens: AccessTokens | None = None
        if config.service_account_file:
            try:
                service_account = ServiceAccount.load(config.service_account_file)
                self.tokens = AccessTokens(service_account, self.client)
            except ValueError as error:
                # Not fatal to the push channel: APNs and Web Push devices still get theirs.
                log.error("fcm.bad_service_account", detail=str(error))

    @property
    def configured(self) -> bool:
        return self.tokens is not None

    def send(self, device: DeviceTarget, delivery: OutboundDelivery) -> Result:
        if not device.token:
            return Result.permanent("fcm device has no registration token")
        body = {"message": fcm_message(device, delivery)}
        return send_through(
            self.context.accounts, [self.account], lambda _account: self._post(device, body)
        )

    def _post(self, device: DeviceTarget, body: dict[str, Any]) -> Result:
        assert self.tokens is not None  # the push channel sends only when configured
        url = f"{self.base_url}/v1/projects/{self.tokens.account.project_id}/messages:send"
        try:
            for _try in range(2):
                token = self.tokens.current()
                response = self.client.post(
                    url, json=body, headers={"Authorization": f"Bearer {token}"}
                )
                if response.status_code != 401:
                    break
                self.tokens.forget(token)
        except httpx.TimeoutException:
            return Result.transient("fcm did not answer in time")
        except (httpx.HTTPError, OSError, ValueError, KeyError) as error:
            return Result.transient(f"fcm unreachable: {type(error).__name__}")
        return _result(device, response)

    def close(self) -> None:
        self.client.close()


def _result(device: DeviceTarget, response: httpx.Response) -> Result:
    status = response.status_code
    if status == 200:
        return Result.sent()
    code, text = _error_of(response)
    if code in _GONE_CODES or status == 404:
        return Result.permanent(f"fcm: token gone ({code or status})", gone_devices=(device.id,))
    if status in (429, 503):
        wait = retry_after_seconds(response.headers.get("Retry-After"), DEFAULT_SLOW_DOWN_SECONDS)
        return Result.deferred(f"fcm: slow down ({status})", retry_after=wait)
    if status >= 500:
        return Result.transient(f"fcm: {status} {code}".rstrip())
    return Result.permanent(f"fcm: {status} {code or text}".rstrip())


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """FCM's error code (`details[].errorCode`, else `status`) and message, when it gave one."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        return "", " ".join(response.text[:200].split())
    for detail in error.get("details", []) or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            return str(detail["errorCode"]), str(error.get("message", ""))
    return str(error.get("status", "")), str(error.get("message", ""))
