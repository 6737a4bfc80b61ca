"""Local servers standing in for the SMS providers, each checking requests as its provider does.

- `TwilioServer`: the Messages API. Basic auth with the account SID and auth token, the
  account's path, a form body with `To` (E.164), `From` (the account's number) and `Body`;
  answers 201 with a message `sid`, or Twilio's JSON errors (21211 for a bad `To`, 20429 with
  `Retry-After`, 401 for bad credentials).
- `AliyunServer`: Dysmsapi `SendSms` over the RPC API. Every common parameter, a fresh
  `SignatureNonce`, a recent `Timestamp`, and the HMAC-SHA1 `Signature` recomputed here from the
  decoded parameters with the encoding of Alibaba's own Java sample (`URLEncoder`, then `+` ->
  `%20`, `*` -> `%2A`, `%7E` -> `~`); answers `Code` `OK` with a `BizId`, or Alibaba's codes.
- `GatewayServer`: the generic gateway of the configuration contract. `Authorization: Bearer`,
  a JSON body of exactly `to`, `text` and `id`.

Each can be told to answer per `tests.channel_harness.Answer`; requests that fail the checks
are refused as the provider would refuse them and kept in `problems`. What was accepted is in
`received`, as (to, text, id) whatever the provider's own field names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, quote_plus, urlsplit

from channels.base import OutboundDelivery
from channels.sms import SmsChannel
from shared.config_file import parse_config
from shared.settings import Settings
from tests.channel_harness import Answer, Rig, context_for, delivery_for

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
#: How long a server told to time out holds a request (the client gives up well before).
HOLD_SECONDS = 5.0
#: A text with what encodings get wrong: non-ASCII, `*`, `~`, `+`, `/`, `&`, `=` and spaces.
AWKWARD_TEXT = "Code 4711 — 您的验证码 *~+/&= ok"


@dataclass(frozen=True)
class Received:
    """One message a provider accepted."""

    to: str
    text: str
    id: str | None = None


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: Message
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class ProviderServer(ABC):
    """A provider's HTTP server on 127.0.0.1; subclasses check requests and word the answers."""

    provider: str

    def __init__(self) -> None:
        self.mode = Answer.OK
        self.received: list[Received] = []
        self.problems: list[str] = []
        #: Every request that reached the server, answered or not.
        self.requests = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self.port = 0

    # What each provider defines.

    @abstractmethod
    def account(self, name: str, **extra: Any) -> dict[str, Any]:
        """The `[[sms.accounts]]` entry of an account on this server."""

    @abstractmethod
    def verify(self, request: Request) -> Received | Reply:
        """The message of a request that passes the provider's checks, else its refusal."""

    @abstractmethod
    def sent(self, message: Received) -> Reply: ...

    @abstractmethod
    def slow_down(self) -> Reply: ...

    @abstractmethod
    def server_error(self) -> Reply: ...

    @abstractmethod
    def rejected(self, message: Received) -> Reply: ...

    # Running.

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, mode: Answer) -> None:
        """Answer every following request this way (`DOWN` stops listening, until told else)."""
        self._release.set()
        self._release = threading.Event()
        self.mode = mode
        if mode is Answer.DOWN:
            self._stop_listening()
        elif self._httpd is None:
            self._listen()

    def __enter__(self) -> Self:
        self._listen()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._release.set()
        self._stop_listening()

    def _listen(self) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self.port = self._httpd.server_address[1]
        # A short poll: stopping (and `DOWN`) waits for the loop to notice.
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def _stop_listening(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def handle(self, request: Request) -> Reply | None:
        """The reply to one request (None: hold it and close without answering)."""
        with self._lock:
            self.requests += 1
        if self.mode is Answer.TIMEOUT:
            self._release.wait(HOLD_SECONDS)
            return None
        checked = self.verify(request)
        if isinstance(checked, Reply):
            with self._lock:
                self.problems.append(f"{checked.status} {checked.body}")
            return checked
        if self.mode is Answer.SLOW_DOWN:
            return self.slow_down()
        if self.mode is Answer.SERVER_ERROR:
            return self.server_error()
        if self.mode is Answer.REJECT_ADDRESS:
            return self.rejected(checked)
        with self._lock:
            self.received.append(checked)
        return self.sent(checked)


def _handler(server: ProviderServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the adapters' clients expect

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            parts = urlsplit(self.path)
            request = Request(
                self.command, parts.path, parts.query, self.headers, self.rfile.read(length)
            )
            reply = server.handle(request)
            if reply is None:
                self.close_connection = True
                return
            body = b"" if reply.body is None else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def twilio_error(status: int, code: int, message: str, **headers: str) -> Reply:
    """An error as Twilio's REST API words one."""
    return Reply(status, {"code": code, "message": message, "status": status}, headers)


def _basic_auth(headers: Message) -> tuple[str, str] | None:
    scheme, _, encoded = (headers.get("Authorization") or "").partition(" ")
    if scheme != "Basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except ValueError:
        return None
    return user, password


class TwilioServer(ProviderServer):
    """Twilio's Messages API for one account; see the module docstring."""

    provider = "twilio"

    def __init__(self) -> None:
        super().__init__()
        self.sid = "AC" + uuid.uuid4().hex
        self.token = uuid.uuid4().hex
        self.sender = "+15005550006"

    def account(self, name: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "provider": "twilio",
            "account_sid": self.sid,
            "auth_token": self.token,
            "from": self.sender,
            "base_url": self.base_url,
            **extra,
        }

    def verify(self, request: Request) -> Received | Reply:
        if _basic_auth(request.headers) != (self.sid, self.token):
            return twilio_error(401, 20003, "Authenticate")
        if request.method != "POST" or request.path != (
            f"/2010-04-01/Accounts/{self.sid}/Messages.json"
        ):
            return twilio_error(404, 20404, "Not found")
        if request.headers.get_content_type() != "application/x-www-form-urlencoded":
            return twilio_error(400, 20001, "form body expected")
        form = dict(parse_qsl(request.body.decode(), keep_blank_values=True, strict_parsing=True))
        to, sender, body = form.get("To", ""), form.get("From"), form.get("Body", "")
        if not E164.fullmatch(to):
            message = f"The 'To' number {to} is not a valid phone number."
            return twilio_error(400, 21211, message)
        if sender != self.sender:
            return twilio_error(400, 21606, "bad 'From' number")
        if not body or len(body) > 1600:
            return twilio_error(400, 21602, "Message body is required.")
        return Received(to, body)

    def sent(self, message: Received) -> Reply:
        return Reply(201, {"sid": "SM" + uuid.uuid4().hex, "status": "queued", "to": message.to})

    def slow_down(self) -> Reply:
        return twilio_error(429, 20429, "Too Many Requests", **{"Retry-After": "7"})

    def server_error(self) -> Reply:
        return twilio_error(503, 20503, "Service unavailable")

    def rejected(self, message: Received) -> Reply:
        # As Twilio words it, the number included: the adapter must not pass it on.
        text = f"The 'To' number {message.to} is not a valid mobile number."
        return twilio_error(400, 21614, text)


#: The common parameters every `SendSms` request must carry, as they must read.
ALIYUN_COMMON = {
    "Action": "SendSms",
    "Format": "JSON",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureVersion": "1.0",
    "Version": "2017-05-25",
}


def alibaba_encode(value: str) -> str:
    """Percent-encoding as Alibaba's Java sample does it, independently of the adapter's."""
    return quote_plus(value, safe="*").replace("+", "%20").replace("*", "%2A").replace("%7E", "~")


class AliyunServer(ProviderServer):
    """Alibaba Cloud SMS `SendSms` for one AccessKey; see the module docstring."""

    provider = "aliyun"

    def __init__(self) -> None:
        super().__init__()
        self.key_id = "LTAI" + uuid.uuid4().hex[:16]
        self.secret = uuid.uuid4().hex
        self.sign_name = "阿里云短信测试"
        self.template_code = "SMS_154950909"
        self.nonces: set[str] = set()

    def account(self, name: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "provider": "aliyun",
            "access_key_id": self.key_id,
            "access_key_secret": self.secret,
            "sign_name": self.sign_name,
            "template_code": self.template_code,
            "base_url": self.base_url,
            **extra,
        }

    @staticmethod
    def _error(status: int, code: str) -> Reply:
        return Reply(status, {"Code": code, "Message": code, "RequestId": uuid.uuid4().hex})

    def verify(self, request: Request) -> Received | Reply:
        if request.method != "GET" or request.path != "/":
            return self._error(404, "InvalidAction.NotFound")
        pairs = parse_qsl(request.query, keep_blank_values=True, strict_parsing=True)
        params = dict(pairs)
        if len(params) != len(pairs):
            return self._error(400, "InvalidParameter.Duplicate")
        if params.get("AccessKeyId") != self.key_id:
            return self._error(404, "InvalidAccessKeyId.NotFound")
        for name, value in ALIYUN_COMMON.items():
            if params.get(name) != value:
                return self._error(400, f"InvalidParameter.{name}")
        if not params.get("RegionId"):
            return self._error(400, "MissingRegionId")
        try:
            stamp = datetime.strptime(params.get("Timestamp", ""), "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            return self._error(400, "InvalidTimeStamp.Format")
        if abs(datetime.now(UTC) - stamp.replace(tzinfo=UTC)) > timedelta(minutes=15):
            return self._error(400, "InvalidTimeStamp.Expired")
        signature = params.pop("Signature", "")
        canonical = "&".join(
            f"{alibaba_encode(k)}={alibaba_encode(v)}" for k, v in sorted(params.items())
        )
        to_sign = "GET&" + alibaba_encode("/") + "&" + alibaba_encode(canonical)
        expected = base64.b64encode(
            hmac.new((self.secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
        ).decode()
        if not hmac.compare_digest(signature, expected):
            return self._error(400, "SignatureDoesNotMatch")
        nonce = params.get("SignatureNonce", "")
        with self._lock:
            if not nonce or nonce in self.nonces:
                return self._error(400, "SignatureNonceUsed")
            self.nonces.add(nonce)
        if params.get("SignName") != self.sign_name:
            return self._error(200, "isv.SMS_SIGNATURE_ILLEGAL")
        if params.get("TemplateCode") != self.template_code:
            return self._error(200, "isv.SMS_TEMPLATE_ILLEGAL")
        try:
            variables = json.loads(params.get("TemplateParam", ""))
        except ValueError:
            return self._error(200, "isv.INVALID_JSON_PARAM")
        number = params.get("PhoneNumbers", "")
        if not re.fullmatch(r"[1-9]\d{6,14}", number):
            return self._error(200, "isv.MOBILE_NUMBER_ILLEGAL")
        if not isinstance(variables, dict) or not isinstance(variables.get("content"), str):
            return self._error(200, "isv.TEMPLATE_MISSING_PARAMETERS")
        return Received("+" + number, variables["content"], params.get("OutId"))

    def sent(self, message: Received) -> Reply:
        return Reply(
            200,
            {"Code": "OK", "Message": "OK", "BizId": "9006197469364984^0", "RequestId": "F655"},
        )

    def slow_down(self) -> Reply:
        return self._error(200, "isv.BUSINESS_LIMIT_CONTROL")

    def server_error(self) -> Reply:
        return self._error(503, "ServiceUnavailable")

    def rejected(self, message: Received) -> Reply:
        return self._error(200, "isv.MOBILE_NUMBER_ILLEGAL")


class GatewayServer(ProviderServer):
    """The generic HTTP gateway of the configuration contract; see the module docstring."""

    provider = "http"

    def __init__(self) -> None:
        super().__init__()
        self.token = uuid.uuid4().hex

    def account(self, name: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "provider": "http",
            "url": f"{self.base_url}/send",
            "token": self.token,
            **extra,
        }

    def verify(self, request: Request) -> Received | Reply:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return Reply(401, {"error": "unauthorized"})
        if request.method != "POST" or request.path != "/send":
            return Reply(404, {"error": "not found"})
        if request.headers.get_content_type() != "application/json":
            return Reply(415, {"error": "JSON expected"})
        try:
            body = json.loads(request.body)
        except ValueError:
            return Reply(400, {"error": "bad JSON"})
        if not isinstance(body, dict) or set(body) != {"to", "text", "id"}:
            return Reply(400, {"error": "fields to, text and id expected"})
        to, text, ident = body["to"], body["text"], body["id"]
        if not (isinstance(to, str) and isinstance(text, str) and isinstance(ident, str)):
            return Reply(400, {"error": "strings expected"})
        if not E164.fullmatch(to) or not text or not ident:
            return Reply(400, {"error": "bad field"})
        return Received(to, text, ident)

    def sent(self, message: Received) -> Reply:
        return Reply(200, {"status": "accepted", "id": message.id})

    def slow_down(self) -> Reply:
        return Reply(429, {"error": "slow down"}, {"Retry-After": "7"})

    def server_error(self) -> Reply:
        return Reply(502, {"error": "upstream down"})

    def rejected(self, message: Received) -> Reply:
        return Reply(422, {"error": "number not reachable"})


def sms_settings(settings: Settings, *accounts: dict[str, Any], **sections: Any) -> Settings:
    """`settings` with these `[[sms.accounts]]` and other `sections` of the configuration
    file, read as the file is read."""
    raw = {"sms": {"accounts": list(accounts)}, **sections}
    return settings.with_overrides(config=parse_config(raw))


def sms_delivery(**changes: Any) -> OutboundDelivery:
    """A delivery of a plain message to a Chinese mobile number, with `changes`."""
    content: dict[str, Any] = {"title": "Hello", "body": AWKWARD_TEXT, "url": None, "data": {}}
    return delivery_for("sms", **({"address": "+8613800138000", "content": content} | changes))


@contextmanager
def sms_rig(settings: Settings, server: ProviderServer) -> Iterator[Rig]:
    """The contract harness's rig of one provider: the channel with one account on `server`."""
    channel = SmsChannel(
        context_for(sms_settings(settings, server.account("only", timeout="500ms")), "sms")
    )

    def check_sent(delivery: OutboundDelivery) -> None:
        assert server.problems == []
        assert server.received == [
            Received(
                delivery.address or "",
                AWKWARD_TEXT,
                None if server.provider == "twilio" else delivery.delivery_id,
            )
        ]

    try:
        yield Rig(channel, server, sms_delivery, check_sent)
    finally:
        channel.close()
