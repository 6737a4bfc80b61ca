"""Identifiers and the clock: sortable prefixed ids and timezone-aware UTC timestamps."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


class _MonotonicClock:
    """Hands out 128-bit values that strictly increase within this process (ULID-style)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next_value(self) -> int:
        millis = time.time_ns() // 1_000_000
        with self._lock:
            value = millis << 80 | int.from_bytes(os.urandom(10), "big") >> 1
            # Within one millisecond, or if the clock stepped back, count up from the last one.
            if value <= self._last:
                value = self._last + 1
            self._last = value
            return value


_clock = _MonotonicClock()


def new_id(prefix: str) -> str:
    """A new id such as `msg_01jd...`: 48 bits of milliseconds then 80 bits that are random,
    except that ids made by one process strictly increase.

    Ids sort by creation time, which keeps inbox and trace order stable and index-friendly.
    """
    value = _clock.next_value()
    chars = []
    for _ in range(26):
        value, index = divmod(value, 32)
        chars.append(_ALPHABET[index])
    return f"{prefix}_{''.join(reversed(chars))}"


def utcnow() -> datetime:
    """The current time in UTC, timezone-aware."""
    return datetime.now(UTC)
