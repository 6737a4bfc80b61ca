"""Identifiers and the clock: sortable prefixed ids and timezone-aware UTC timestamps."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
# Two digits per 10 bits: an id's 26 digits in 13 look-ups (ids are made on every hot path).
_DIGIT_PAIRS = [high + low for high in _ALPHABET for low in _ALPHABET]
_PAIR_SHIFTS = range(120, -10, -10)


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
    return f"{prefix}_{base32(_clock.next_value())}"


def base32(value: int) -> str:
    """A 128-bit value as 26 Crockford base32 digits, most significant first."""
    return "".join([_DIGIT_PAIRS[value >> shift & 1023] for shift in _PAIR_SHIFTS])


def utcnow() -> datetime:
    """The current time in UTC, timezone-aware."""
    return datetime.now(UTC)
