"""Masked forms of addresses: enough for a person to recognise one, never the whole of it.

Used where an address must not be kept or shown in full: the deliveries of a deleted user, and
log lines.
"""

from __future__ import annotations


def mask_address(address: str) -> str:
    """`alice@example.com` -> `a***@example.com`, `+33612345678` -> `+33*******78`."""
    local, at, domain = address.rpartition("@")
    if at:
        return f"{local[:1]}***@{domain}"
    if len(address) <= 4:
        return "*" * len(address)
    return address[:3] + "*" * (len(address) - 5) + address[-2:]
