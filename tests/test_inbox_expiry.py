"""A web notification past its message's `expires_at` leaves the inbox, through the whole stack.

The message goes in through the API, reaches the browser's inbox through the dispatcher, the
web worker and the gateway, and expires there: a browser that connects later is not sent it,
`GET /v1/inbox` does not list it, it is not counted unread, and its delivery ends `expired`
soon after.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from producer_api.api_keys import NewApp
from shared.ids import utcnow
from shared.tokens import mint_browser_token
from tests.conftest import bearer
from tests.inbox_client import InboxClient
from tests.stack import Stack, wait_until

#: Long enough for the pipeline to bring the messages to the inbox on a busy machine.
EXPIRES_IN = timedelta(seconds=5)


def _message(stack: Stack, tenant: NewApp, message_id: str) -> dict[str, Any]:
    response = httpx.get(f"{stack.api_url}/v1/messages/{message_id}", headers=bearer(tenant))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _status(stack: Stack, tenant: NewApp, message_id: str) -> str:
    [delivery] = _message(stack, tenant, message_id)["deliveries"]
    return str(delivery["status"])


def test_an_expired_web_notification_is_not_replayed_listed_or_counted(
    stack: Stack, tenant: NewApp
) -> None:
    user = "expiring-user"
    expires_at = utcnow() + EXPIRES_IN
    message_ids = []
    for title in ("flash sale", "flash sale, last call"):
        response = httpx.post(
            f"{stack.api_url}/v1/messages",
            headers=bearer(tenant),
            json={
                "to": [{"user_id": user}],
                "channels": ["web"],
                "content": {"title": title},
                "expires_at": expires_at.isoformat(),
            },
        )
        assert response.status_code == 202, response.text
        message_ids.append(response.json()["id"])
    token, _ = mint_browser_token(stack.settings.secret_key, tenant.app_id, user, 600)

    # Before it expires the browser gets both, and acknowledges the first (delivered, unread).
    early = InboxClient(stack.gateway_url, token).connect()
    try:
        received = early.wait_for(2, timeout=EXPIRES_IN.total_seconds())
        assert utcnow() < expires_at, "the pipeline took longer than the message lived"
        first = next(n for n in received if n["message_id"] == message_ids[0])
        early.ack([first["id"]])
        wait_until(
            lambda: (
                _message(stack, tenant, message_ids[0])["deliveries"][0]["status"] == "delivered"
            ),
            10,
            "the ack",
        )
    finally:
        early.close()

    wait_until(lambda: utcnow() > expires_at, EXPIRES_IN.total_seconds() + 5, "the expiry")

    late = InboxClient(stack.gateway_url, token).connect()
    try:
        assert late.notifications == []
        assert late.unread_counts == [0]
    finally:
        late.close()
    headers = {"Authorization": f"Bearer {token}"}
    listed = httpx.get(f"{stack.gateway_url}/v1/inbox", headers=headers)
    assert (listed.status_code, listed.json()["items"]) == (200, [])
    count = httpx.get(f"{stack.gateway_url}/v1/inbox/unread-count", headers=headers)
    assert count.json() == {"count": 0}

    # The gateway settles the statuses of those who connected in batches, a moment later.
    wait_until(
        lambda: all(_status(stack, tenant, m) == "expired" for m in message_ids),
        10,
        "the deliveries to end expired",
    )
    for message_id in message_ids:
        shown = _message(stack, tenant, message_id)
        [delivery] = shown["deliveries"]
        assert delivery["status"] == "expired", shown
        expired = [e for e in shown["events"] if e["stage"] == "expired"]
        assert [e["delivery_id"] for e in expired] == [delivery["id"]], shown["events"]
