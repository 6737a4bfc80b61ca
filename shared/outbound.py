"""The guard on URLs that omnipush itself will call: message callbacks, webhooks, Web Push.

A URL given by a business system must not make omnipush call into its own network: a cloud
metadata service on 169.254.169.254, a database on loopback, an admin page on 10.0.0.0/8.
`OutboundPolicy.check_url` parses the URL (http or https, a host, no user name or password),
resolves the host and refuses it unless every address it resolves to is public, or lies inside
a CIDR of the allow-list (`OMNIPUSH_OUTBOUND_ALLOW`, for tests and private deployments).

The check runs when a URL is accepted, and again when it is called: DNS can answer differently
by then. `outbound_client` checks the URL on every request and connects to the very address it
just vetted (TLS still verifies the certificate against the host name), so no second lookup can
slip another address in; it never follows redirects, and ignores proxy settings of the
environment (a proxy would make the connection on our behalf, unchecked).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: host, port -> the addresses the host resolves to (as text); OSError when it does not.
Resolver = Callable[[str, int], Sequence[str]]

SCHEMES = ("http", "https")
RESOLVE_TIMEOUT_SECONDS = 2.0
# NAT64 (RFC 6052) carries an IPv4 address in its last 32 bits, as 6to4 and IPv4-mapped do.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class OutboundRefused(ValueError):
    """A URL omnipush will not call; the message says why, for the caller to read."""


class Unresolvable(OutboundRefused):
    """A URL whose host does not resolve now: at call time, maybe only for a while."""


@functools.cache
def _resolver_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="outbound-dns")


def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, waiting at most a couple of seconds:
    a DNS server that never answers must not hold a request for the resolver's own timeouts."""
    lookup = _resolver_threads().submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        answers = lookup.result(timeout=RESOLVE_TIMEOUT_SECONDS)
    except FutureTimeout:
        raise OSError(f"no DNS answer for {host} within {RESOLVE_TIMEOUT_SECONDS:g} s") from None
    return list(dict.fromkeys(str(info[4][0]) for info in answers))


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64): that is where it goes."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _kind(address: IPAddress) -> str | None:
    """Why an address is not public (None when it is)."""
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    if address.is_reserved or not address.is_global:
        return "non-public"
    return None


@dataclass(frozen=True)
class Destination:
    """A vetted URL: its scheme, host and port, and the addresses it may be reached at now."""

    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class OutboundPolicy:
    """Which addresses omnipush may call: public ones, and those inside `allow`."""

    allow: tuple[IPNetwork, ...] = ()
    resolver: Resolver = field(default=system_resolver, compare=False)

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be called (None when it may)."""
        if any(address in network for network in self.allow):
            return None
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = self.refusal(embedded)
            return None if inner is None else f"{inner} (as {address})"
        kind = _kind(address)
        return None if kind is None else f"{address}, a {kind} address"

    def check_url(self, url: str, schemes: Sequence[str] = SCHEMES) -> Destination:
        """The URL's destination, every address of it vetted; OutboundRefused says why not."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise OutboundRefused(f"Not a valid URL: {error}.") from None
        scheme = parts.scheme.lower()
        if scheme not in schemes:
            raise OutboundRefused(f"Must be a {' or '.join(schemes)} URL.")
        if parts.username is not None or parts.password is not None:
            raise OutboundRefused("Must not carry a user name or password.")
        host = parts.hostname
        if not host:
            raise OutboundRefused("Must name a host.")
        port = port if port is not None else (443 if scheme == "https" else 80)
        addresses = self._addresses(host, port)
        for text in addresses:
            reason = self.refusal(ipaddress.ip_address(text))
            if reason is not None:
                raise OutboundRefused(
                    f"{host} is {reason}: omnipush does not call private, loopback, link-local "
                    "or multicast addresses unless OMNIPUSH_OUTBOUND_ALLOW lets it."
                )
        return Destination(scheme, host, port, addresses)

    def _addresses(self, host: str, port: int) -> tuple[str, ...]:
        try:
            return (str(ipaddress.ip_address(host)),)
        except ValueError:
            pass
        try:
            answers = tuple(self.resolver(host, port))
        except (OSError, UnicodeError) as error:
            raise Unresolvable(f"{host} does not resolve ({error}).") from None
        if not answers:
            raise Unresolvable(f"{host} does not resolve.")
        # A scope (`fe80::1%eth0`) is not part of the address to judge.
        return tuple(answer.partition("%")[0] for answer in answers)

    def remembering(self) -> OutboundPolicy:
        """This policy resolving each host once: for checking many URLs of one request."""
        return replace(self, resolver=functools.cache(self.resolver))


class PinnedTransport(httpx.BaseTransport):
    """An httpx transport that vets every request's URL and connects to the address it vetted.

    The request goes to the vetted IP address with its own `Host` header and, over TLS, the
    host name for SNI and certificate checks. Each host keeps a connection pool of its own, so
    a connection made for one host name is never reused for another at the same address.
    """

    max_hosts = 64

    def __init__(self, policy: OutboundPolicy, verify: bool = True) -> None:
        self.policy = policy
        self.verify = verify
        self._pools: dict[tuple[str, str, int], httpx.HTTPTransport] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        destination = self.policy.check_url(str(request.url))
        pinned = httpx.Request(
            request.method,
            request.url.copy_with(host=destination.addresses[0]),
            headers=request.headers,
            stream=request.stream,
            extensions={**request.extensions, "sni_hostname": destination.host},
        )
        return self._pool(destination).handle_request(pinned)

    def _pool(self, destination: Destination) -> httpx.HTTPTransport:
        key = (destination.scheme, destination.host, destination.port)
        pool = self._pools.get(key)
        if pool is None:
            if len(self._pools) >= self.max_hosts:
                oldest = next(iter(self._pools))
                self._pools.pop(oldest).close()
            pool = httpx.HTTPTransport(verify=self.verify, trust_env=False)
            self._pools[key] = pool
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def outbound_client(policy: OutboundPolicy, timeout: float = 10.0) -> httpx.Client:
    """An HTTP client for calling URLs that business systems gave: see the module docstring.

    A caller that asks for redirects anyway still has every hop vetted by the transport.
    """
    return httpx.Client(
        transport=PinnedTransport(policy),
        follow_redirects=False,
        trust_env=False,
        timeout=timeout,
    )
