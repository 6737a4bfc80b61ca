"""The outbound-URL guard: which URLs omnipush will call, checked again when it calls them."""

from __future__ import annotations

import ipaddress
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.outbound import OutboundPolicy, OutboundRefused, outbound_client
from shared.settings import Settings
from tests.offline_dns import offline_resolver

POLICY = OutboundPolicy(resolver=offline_resolver())
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)

SECRET_KEY = secrets.token_urlsafe(32)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://127.0.0.1:6379/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://localhost/", "loopback"),
        ("http://10.0.0.5/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[fc00::1]/", "private"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://100.64.0.1/", "non-public"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[2002:7f00:1::]/", "loopback"),
        ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),
        ("http://2130706433/", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://metadata.internal.example/", "link-local"),
        ("https://both.example/", "private"),
        ("https://nowhere.example/", "does not resolve"),
        ("ftp://shop.example/", "http or https"),
        ("https://user:secret@shop.example/", "user name or password"),
        ("https:///path", "host"),
        ("https://shop.example:99999/", "valid URL"),
    ],
)
def test_urls_into_the_servers_own_network_are_refused(url: str, why: str) -> None:
    with pytest.raises(OutboundRefused, match=why):
        POLICY.check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://shop.example/hooks/omnipush",
        "http://93.184.215.14:8080/x",
        "https://[2606:4700::1111]/",
        "https://[::ffff:93.184.215.14]/",
    ],
)
def test_public_urls_pass(url: str) -> None:
    assert POLICY.check_url(url).addresses


def test_the_allow_list_opens_the_networks_it_names_and_no_others() -> None:
    allowing = OutboundPolicy(allow=LOOPBACK, resolver=offline_resolver())
    assert allowing.check_url("http://127.0.0.1:8080/").addresses == ("127.0.0.1",)
    with pytest.raises(OutboundRefused, match="private"):
        allowing.check_url("http://10.0.0.5/")
    with pytest.raises(OutboundRefused, match="::1, a loopback"):
        allowing.check_url("http://localhost/")  # its IPv6 address is not in 127.0.0.0/8


def test_the_allow_list_is_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {"OMNIPUSH_SECRET_KEY": SECRET_KEY, "OMNIPUSH_OUTBOUND_ALLOW": "10.0.0.0/8, ::1"}
    )
    assert settings.outbound_allow == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert Settings.from_env({"OMNIPUSH_SECRET_KEY": SECRET_KEY}).outbound_allow == ()


def test_a_bad_allow_list_names_the_setting() -> None:
    environ = {"OMNIPUSH_SECRET_KEY": SECRET_KEY, "OMNIPUSH_OUTBOUND_ALLOW": "10.0.0.0/33"}
    with pytest.raises(RuntimeError, match=r"OMNIPUSH_OUTBOUND_ALLOW: '10\.0\.0\.0/33'"):
        Settings.from_env(environ)


@dataclass
class LocalServer:
    """An HTTP server on 127.0.0.1 that records what it was asked: `/hook` answers 200,
    `/redirect` sends the caller on to `/hook`."""

    port: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    server = LocalServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            server.requests.append((self.path, self.headers["Host"]))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", server.url("/hook"))
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_client_refuses_a_local_server_without_the_allow_list(
    local_server: LocalServer,
) -> None:
    with outbound_client(POLICY) as client, pytest.raises(OutboundRefused, match="loopback"):
        client.post(local_server.url("/hook"), json={"event": "sent"})
    assert local_server.requests == []


def test_the_client_reaches_a_local_server_the_allow_list_opens(
    local_server: LocalServer,
) -> None:
    policy = OutboundPolicy(allow=LOOPBACK, resolver=offline_resolver())
    with outbound_client(policy) as client:
        response = client.post(local_server.url("/hook"), json={"event": "sent"})
    assert response.status_code == 200
    assert local_server.requests == [("/hook", f"127.0.0.1:{local_server.port}")]


def test_the_client_never_follows_a_redirect(local_server: LocalServer) -> None:
    policy = OutboundPolicy(allow=LOOPBACK, resolver=offline_resolver())
    with outbound_client(policy) as client:
        response = client.post(local_server.url("/redirect"), json={})
    assert response.status_code == 302
    assert [path for path, _host in local_server.requests] == ["/redirect"]


class ChangingDns:
    """A DNS whose answer for a name changes after the first lookup (DNS rebinding)."""

    def __init__(self, answers: list[Sequence[str]]) -> None:
        self.answers = answers
        self.lookups = 0

    def __call__(self, host: str, port: int) -> Sequence[str]:
        answer = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        return answer


def test_a_name_that_resolves_elsewhere_by_call_time_is_refused_then(
    local_server: LocalServer,
) -> None:
    dns = ChangingDns([["93.184.215.14"], ["127.0.0.1"]])
    policy = OutboundPolicy(resolver=dns)
    url = local_server.url("/hook", host="hooks.shop.example")
    policy.check_url(url)  # accepted: public when the message came in
    with outbound_client(policy) as client, pytest.raises(OutboundRefused, match="loopback"):
        client.post(url, json={})
    assert local_server.requests == []


def test_the_client_connects_to_the_address_it_vetted_not_to_a_new_lookup(
    local_server: LocalServer,
) -> None:
    # The name exists only in the policy's resolver: had the client looked it up again (in
    # the system's DNS), the request could not have been made at all.
    dns = ChangingDns([["127.0.0.1"]])
    policy = OutboundPolicy(allow=LOOPBACK, resolver=dns)
    with outbound_client(policy) as client:
        response = client.post(local_server.url("/hook", host="hooks.internal.test"), json={})
    assert response.status_code == 200
    assert local_server.requests == [("/hook", f"hooks.internal.test:{local_server.port}")]
    assert dns.lookups == 1
