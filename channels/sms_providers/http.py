"""The generic SMS gateway: `POST url`, `Authorization: Bearer <token>`, JSON `{to, text, id}`.

`id` is the delivery id, so a gateway can drop a repeated request. 2xx is sent, 429 (with
`Retry-After`) slows the account down, 5xx and timeouts are transient, other 4xx permanent.
"""

from __future__ import annotations

from channels.base import Result
from channels.sms_providers import SmsProvider, http_result
from shared.config_file import Account


class HttpProvider(SmsProvider):
    """One gateway account (`url`, `token`)."""

    def __init__(self, account: Account) -> None:
        super().__init__(account)
        self.url = str(account.options["url"])
        self.headers = {"Authorization": f"Bearer {account.options['token']}"}

    def attempt(self, to: str, text: str, delivery_id: str) -> Result:
        response = self.client.post(
            self.url, json={"to": to, "text": text, "id": delivery_id}, headers=self.headers
        )
        return http_result("http", response, None)
