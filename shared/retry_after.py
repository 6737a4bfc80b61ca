"""A server's `Retry-After` (RFC 9110: delay-seconds or an HTTP date) as seconds from now."""

from __future__ import annotations

import email.utils
import time


def retry_after_seconds(value: str | None, default: float) -> float:
    """How long `value` asks to wait, at least 1 ms; `default` when it is absent or unreadable."""
    if not value:
        return default
    text = value.strip()
    try:
        return max(0.001, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return default
    return max(0.001, when.timestamp() - time.time())
