"""A resolver for tests that never asks the network: names from a table, IP literals as they are.

In-process apps are built with it, so no test depends on DNS (see shared/outbound.py).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence

from shared.outbound import Resolver

#: The names tests use, with the kind of address a real DNS would give them.
NAMES: Mapping[str, Sequence[str]] = {
    "localhost": ("127.0.0.1", "::1"),
    "shop.example": ("93.184.215.14",),
    "push.example.net": ("93.184.215.15",),
    "metadata.internal.example": ("169.254.169.254",),
    "both.example": ("93.184.215.16", "10.1.2.3"),
}


def offline_resolver(names: Mapping[str, Sequence[str]] = NAMES) -> Resolver:
    """Resolves `names`, and numeric hosts as the system would; anything else does not exist."""

    def resolve(host: str, port: int) -> Sequence[str]:
        if host in names:
            return names[host]
        try:
            answers = socket.getaddrinfo(host, port, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            raise OSError(f"{host}: no such name") from None
        return [str(info[4][0]) for info in answers]

    return resolve
