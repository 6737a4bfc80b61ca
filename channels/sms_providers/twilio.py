"""Twilio's Programmable Messaging: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`.

Form fields `To`, `From` and `Body`, HTTP basic auth with the account SID and auth token. A 201
(any 2xx) is sent, with the message's `sid` as the detail; 429 slows the account down; 5xx is
transient; a 400 carries Twilio's error `code` (21211 invalid `To`, 21614 not a mobile number,
21610 unsubscribed, ...), which is permanent, as is a 401 (wrong credentials). Twilio's own error
`message` quotes the number, so only the code is kept.
"""

from __future__ import annotations

from typing import Any

import httpx

from channels.base import Outcome, Result
from channels.sms_providers import SmsProvider, http_result
from shared.config_file import Account

DEFAULT_BASE_URL = "https://api.twilio.com"


class TwilioProvider(SmsProvider):
    """One Twilio account (`account_sid`, `auth_token`, `from`, optional `base_url`)."""

    def __init__(self, account: Account) -> None:
        super().__init__(account)
        options = account.options
        base_url = str(options.get("base_url", DEFAULT_BASE_URL)).rstrip("/")
        self.url = f"{base_url}/2010-04-01/Accounts/{options['account_sid']}/Messages.json"
        self.auth = (str(options["account_sid"]), str(options["auth_token"]))
        self.sender = str(options["from"])

    def attempt(self, to: str, text: str, delivery_id: str) -> Result:
        response = self.client.post(
            self.url, data={"To": to, "From": self.sender, "Body": text}, auth=self.auth
        )
        answer = _json(response)
        result = http_result("twilio", response, f"twilio sid {answer.get('sid', '?')}")
        code = answer.get("code")
        if result.outcome is Outcome.PERMANENT and isinstance(code, int):
            return Result.permanent(f"twilio answered {response.status_code}, error {code}")
        return result


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
