"""Standard Webhooks (standardwebhooks.com): the secrets and signatures of what omnipush POSTs.

A secret is `whsec_` and the base64 of 24 to 64 random bytes. A request carries `webhook-id`
(unique per event, stable across retries), `webhook-timestamp` (Unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed by the
secret's decoded bytes, so a receiver verifies it with the reference library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time

PREFIX = "whsec_"
SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


def generate_secret() -> str:
    """A new secret: `whsec_` and the base64 of 24 random bytes."""
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The key a secret stands for; ValueError when it is not one of the form above."""
    if not secret.startswith(PREFIX):
        raise ValueError(f"A webhook secret starts with {PREFIX}.")
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"A webhook secret is {PREFIX} and then base64.") from None
    if not SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"A webhook secret holds {SECRET_BYTES} to {MAX_SECRET_BYTES} bytes (base64)."
        )
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value of one request."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secret: str, message_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three headers of a request with `body`, signed now (or at `timestamp`)."""
    at = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(at),
        "webhook-signature": signature(secret_key(secret), message_id, at, body),
    }
