"""Alibaba Cloud SMS (Dysmsapi `SendSms`, version 2017-05-25) over its signed RPC API.

Each request is a GET whose query carries the common parameters and `SendSms`'s own, signed
with signature method HMAC-SHA1 (version 1.0) exactly as Alibaba documents it:

1. percent-encode every name and value in UTF-8, leaving only `A-Z a-z 0-9 - _ . ~` as they are
   (so a space is `%20`, `*` is `%2A`, and `~` stays `~`);
2. sort the pairs by encoded name and join them as `name=value` with `&`: the canonical query;
3. StringToSign = `GET&%2F&` + the percent-encoded canonical query;
4. Signature = base64(HMAC-SHA1(key = AccessKeySecret + "&", StringToSign)).

The text goes into the account's template (`template_code`, approved with `sign_name`) as its
`content` variable: `TemplateParam = {"content": text}`. Numbers are sent without their `+`
(`8613800138000`), as Alibaba writes international numbers.

`Code` `OK` is sent (the `BizId` is the detail); `isv.BUSINESS_LIMIT_CONTROL` and `Throttling*`
slow the account down; `isv.MOBILE_NUMBER_ILLEGAL` and other `isv.*` (the request's fault) are
permanent; `isp.*` (Alibaba's side), 5xx and timeouts are transient.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote

import httpx

from channels.base import Result
from channels.sms_providers import SmsProvider, slow_down
from shared.config_file import Account

DEFAULT_BASE_URL = "https://dysmsapi.aliyuncs.com"
DEFAULT_REGION = "cn-hangzhou"
#: Alibaba's flow control counts per minute (and hour, and day): pause the account a minute.
LIMIT_PAUSE_SECONDS = 60.0


def percent_encode(value: str) -> str:
    """Alibaba's percent-encoding (RFC 3986 unreserved characters only are left as they are)."""
    return quote(value, safe="~")


def canonical_query(params: Mapping[str, str]) -> str:
    encoded = sorted((percent_encode(k), percent_encode(v)) for k, v in params.items())
    return "&".join(f"{k}={v}" for k, v in encoded)


def signature(params: Mapping[str, str], secret: str, method: str = "GET") -> str:
    """The `Signature` of a request with `params` (all of them but `Signature`)."""
    to_sign = f"{method}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"
    digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class AliyunProvider(SmsProvider):
    """One Alibaba Cloud account (`access_key_id`, `access_key_secret`, `sign_name`,
    `template_code`, optional `region` and `base_url`)."""

    def __init__(self, account: Account) -> None:
        super().__init__(account)
        options = account.options
        self.url = str(options.get("base_url", DEFAULT_BASE_URL)).rstrip("/") + "/"
        self.key_id = str(options["access_key_id"])
        self.secret = str(options["access_key_secret"])
        self.sign_name = str(options["sign_name"])
        self.template_code = str(options["template_code"])
        self.region = str(options.get("region", DEFAULT_REGION))

    def signed_query(self, to: str, text: str, delivery_id: str) -> str:
        """The whole query string of one `SendSms` request, signature included."""
        params = {
            "AccessKeyId": self.key_id,
            "Action": "SendSms",
            "Format": "JSON",
            "RegionId": self.region,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": uuid.uuid4().hex,
            "SignatureVersion": "1.0",
            "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": "2017-05-25",
            "PhoneNumbers": to.removeprefix("+"),
            "SignName": self.sign_name,
            "TemplateCode": self.template_code,
            "TemplateParam": json.dumps({"content": text}, ensure_ascii=False),
            "OutId": delivery_id,
        }
        signed = signature(params, self.secret)
        return f"Signature={percent_encode(signed)}&{canonical_query(params)}"

    def attempt(self, to: str, text: str, delivery_id: str) -> Result:
        # The query is built here, not by httpx, so that it is sent exactly as it was signed.
        response = self.client.get(self.url + "?" + self.signed_query(to, text, delivery_id))
        if response.status_code >= 500:
            return Result.transient(f"aliyun answered {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        code = answer.get("Code") if isinstance(answer, dict) else None
        if not isinstance(code, str):
            return _without_code(response)
        if code == "OK":
            return Result.sent(f"aliyun BizId {answer.get('BizId', '?')}")
        if code == "isv.BUSINESS_LIMIT_CONTROL" or code.startswith("Throttling"):
            return slow_down("aliyun", LIMIT_PAUSE_SECONDS)
        if code.startswith("isp."):
            return Result.transient(f"aliyun answered {code}")
        return Result.permanent(f"aliyun answered {response.status_code}, {code}")


def _without_code(response: httpx.Response) -> Result:
    """An answer without a `Code`: nothing says whether it was sent, so it is tried again."""
    return Result.transient(f"aliyun answered {response.status_code} without a Code")
