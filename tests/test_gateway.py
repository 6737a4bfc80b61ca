"""The browser gateway against a real gunicorn/gevent gateway process, PostgreSQL and Redis.

Messages and deliveries are written straight into the store, and live notifications are
published exactly as the web worker does, so these tests need only the gateway process (see
tests/gateway_support.py). Browsers are real python-socketio clients on the websocket transport.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
import socketio
from flask import Flask
from werkzeug.serving import make_server

from channels.web import WebChannel
from producer_api.api_keys import NewApp
from shared.ids import new_id, utcnow
from shared.models import Delivery, Message
from shared.notifications import notification_payload, user_room
from shared.runtime import Runtime
from shared.settings import Settings
from shared.tokens import AUDIENCE, BrowserIdentity, BrowserToken, mint_browser_token
from tests.channel_harness import context_for
from tests.gateway_support import (
    TIMEOUT,
    Browser,
    Gateway,
    add_items,
    add_many,
    emit_live,
    events_of,
    new_user,
    outbound,
    running_gateway,
    statuses,
    token_for,
)
from tests.stack import wait_until


@pytest.fixture(scope="module")
def gateway(inprocess_settings: Settings) -> Iterator[Gateway]:
    """A gateway process on the in-process tests' store (the session `stack` may hold another)."""
    with running_gateway(inprocess_settings) as running:
        yield running


@pytest.fixture
def browsers(gateway: Gateway) -> Iterator[Callable[[], Browser]]:
    """A factory of browsers, all disconnected at the end of the test."""
    made: list[Browser] = []

    def make() -> Browser:
        browser = Browser(gateway.url)
        made.append(browser)
        return browser

    yield make
    for browser in made:
        browser.close()


# -- connect and auth --------------------------------------------------------------------------


def _expired(settings: Settings, app_id: str) -> str:
    past = utcnow() - timedelta(minutes=10)
    claims = {"sub": "u", "app": app_id, "aud": AUDIENCE, "iat": past, "exp": past}
    return jwt.encode(claims, settings.secret_key, algorithm="HS256")


@pytest.mark.parametrize(
    ("case", "via_query"),
    [
        ("missing", False),
        ("garbage", False),
        ("expired", False),
        ("wrong_secret", False),
        ("garbage", True),
        ("expired", True),
    ],
)
def test_a_bad_token_is_refused_as_unauthorized(
    case: str, via_query: bool, gateway: Gateway, tenant: NewApp, browsers: Any
) -> None:
    settings = gateway.settings
    token = {
        "missing": None,
        "garbage": "not-a-jwt",
        "expired": _expired(settings, tenant.app_id),
        "wrong_secret": mint_browser_token("another-secret-" + "x" * 40, tenant.app_id, "u", 300)[
            0
        ],
    }[case]
    browser = browsers()
    with pytest.raises(socketio.exceptions.ConnectionError):
        browser.connect(token, via_query=via_query)
    assert browser.connect_errors == [{"message": "unauthorized"}]
    assert not browser.client.connected


def test_a_token_in_the_query_string_connects(
    gateway: Gateway, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    user = new_user()
    add_items(runtime, tenant.app_id, user, 2)
    browser = browsers().connect(token_for(gateway.settings, tenant.app_id, user), via_query=True)
    browser.wait_count(2)
    assert len(browser.ids()) == 2


def test_long_polling_works_too(
    gateway: Gateway, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    user = new_user()
    [item] = add_items(runtime, tenant.app_id, user)
    browser = browsers().connect(
        token_for(gateway.settings, tenant.app_id, user), transports=["polling"]
    )
    browser.wait_count(1)
    assert browser.ids() == [item.delivery_id]


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the gateway closed the socket"
        data += chunk
    return data


def test_a_websocket_offered_compression_opens_uncompressed(gateway: Gateway) -> None:
    """Browsers offer permessage-deflate; a compressor kept for each socket would cost more
    memory than the rest of an idle socket, so the gateway declines it and frames go out plain."""
    address = urlsplit(gateway.url)
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
        f"Host: {address.netloc}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=TIMEOUT) as sock:
        sock.sendall(handshake.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += _read_exactly(sock, 1)
        status, *headers = head.decode().strip().split("\r\n")
        assert status.startswith("HTTP/1.1 101"), status
        names = {header.split(":", 1)[0].strip().lower() for header in headers}
        assert "sec-websocket-extensions" not in names
        first, length = _read_exactly(sock, 2)
        assert first == 0x81, "the Engine.IO open packet is one plain text frame (no RSV1)"
        assert _read_exactly(sock, length & 0x7F).startswith(b"0{")


# -- token expiry and renewal ------------------------------------------------------------------


def _wait_past(moment: Any, what: str) -> None:
    wait_until(lambda: utcnow() > moment, TIMEOUT, what)


def test_a_socket_is_told_and_disconnected_when_its_token_expires(
    gateway: Gateway, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    user = new_user()
    [item] = add_items(runtime, tenant.app_id, user)
    token, expires_at = mint_browser_token(gateway.settings.secret_key, tenant.app_id, user, 2)
    browser = browsers().connect(token)
    browser.wait_count(1)
    assert browser.client.connected

    # A 2 s token: gone within a second or so of its expiry, with the reason first.
    wait_until(
        lambda: not browser.client.connected or utcnow() > expires_at + timedelta(seconds=2),
        TIMEOUT,
        "the disconnect",
    )
    assert not browser.client.connected, "still connected 2 s after the token expired"
    assert browser.events("unauthorized") == [{"message": "token expired"}]
    assert browser.disconnects

    # What the socket would still send goes nowhere; the item stays unacknowledged.
    with pytest.raises(socketio.exceptions.BadNamespaceError):
        browser.client.emit("ack", {"ids": [item.delivery_id]})
    assert statuses(runtime, [item]) == {item.delivery_id: "sent"}


def test_a_renewed_socket_stays_connected_past_its_first_token(
    gateway: Gateway, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    user = new_user()
    [item] = add_items(runtime, tenant.app_id, user)
    settings = gateway.settings
    first, first_expiry = mint_browser_token(settings.secret_key, tenant.app_id, user, 2)
    browser = browsers().connect(first)
    browser.wait_count(1)

    fresh, fresh_expiry = mint_browser_token(settings.secret_key, tenant.app_id, user, 300)
    assert browser.call("renew", {"token": fresh}) == {
        "ok": True,
        "expires_at": fresh_expiry.isoformat(),
    }
    _wait_past(first_expiry + timedelta(seconds=2), "two seconds past the first token")
    assert browser.client.connected
    assert browser.events("unauthorized") == []
    assert browser.call("ack", {"ids": [item.delivery_id]}) == {"ok": True, "updated": 1}


@pytest.mark.parametrize(
    "case", ["garbage", "expired", "wrong_secret", "another_user", "another_app", "invalid"]
)
def test_a_bad_renewal_is_refused_and_the_socket_keeps_its_token(
    case: str, gateway: Gateway, tenant: NewApp, browsers: Any
) -> None:
    settings = gateway.settings
    user = new_user()
    body: Any = {
        "garbage": {"token": "not-a-jwt"},
        "expired": {"token": _expired(settings, tenant.app_id)},
        "wrong_secret": {
            "token": mint_browser_token("another-secret-" + "x" * 40, tenant.app_id, user, 300)[0]
        },
        "another_user": {"token": token_for(settings, tenant.app_id, new_user())},
        "another_app": {"token": token_for(settings, "app_other", user)},
        "invalid": {"token": 42},
    }[case]
    token, expires_at = mint_browser_token(settings.secret_key, tenant.app_id, user, 3)
    browser = browsers().connect(token)
    browser.wait_count(0)

    answer = browser.call("renew", body)
    assert answer["ok"] is False
    assert answer["error"] == ("invalid" if case == "invalid" else "unauthorized")
    assert browser.client.connected
    # The socket still ends with its own token.
    wait_until(
        lambda: not browser.client.connected or utcnow() > expires_at + timedelta(seconds=3),
        TIMEOUT,
        "the disconnect",
    )
    assert browser.events("unauthorized") == [{"message": "token expired"}]


@contextmanager
def gateway_in_process(runtime: Runtime) -> Iterator[tuple[str, Flask]]:
    """The gateway app served from this process (threading mode), and its URL."""
    from ws_gateway.app import create_app

    app = create_app(runtime=runtime)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        thread.join(TIMEOUT)


@pytest.mark.parametrize("event", ["ack", "read"])
def test_an_event_on_a_socket_whose_token_has_expired_is_refused(
    event: str, runtime: Runtime, tenant: NewApp
) -> None:
    # In process, so the socket's token can be made to expire at a moment of the test's choosing,
    # and without the expiry watch (it runs only in a served gateway): the refusal comes from
    # the handler itself.
    from ws_gateway.app import socketio_of
    from ws_gateway.sockets import TOKEN_KEY

    user = new_user()
    [item] = add_items(runtime, tenant.app_id, user)
    with gateway_in_process(runtime) as (url, app):
        browser = Browser(url).connect(token_for(runtime.settings, tenant.app_id, user))
        try:
            browser.wait_count(1)
            server = socketio_of(app).server
            [(sid, _eio_sid)] = server.manager.get_participants("/", user_room(tenant.app_id, user))
            expired = BrowserToken(
                identity=BrowserIdentity(tenant.app_id, user),
                expires_at=utcnow() - timedelta(seconds=1),
            )
            server.save_session(sid, {TOKEN_KEY: expired}, namespace="/")

            browser.client.emit(event, {"ids": [item.delivery_id]})
            browser.wait(lambda b: not b.client.connected, "the disconnect")
            assert browser.events("unauthorized") == [{"message": "token expired"}]
            assert statuses(runtime, [item]) == {item.delivery_id: "sent"}
        finally:
            browser.close()


# -- replay, ack, read -------------------------------------------------------------------------


def test_connect_replays_unacknowledged_oldest_first_then_the_unread_count(
    gateway: Gateway, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    user = new_user()
    sent = add_items(runtime, tenant.app_id, user, 5, shuffle=True)
    sending = add_items(runtime, tenant.app_id, user, 1, status="sending")
    delivered = add_items(runtime, tenant.app_id, user, 2, status="delivered")
    add_items(runtime, tenant.app_id, user, 1, status="read")
    add_items(runtime, tenant.app_id, user, 1, status="pending")
    add_items(runtime, tenant.app_id, user, 1, status="failed")
    add_items(runtime, tenant.app_id, user, 1, channel="email")

    browser = browsers().connect(token_for(gateway.settings, tenant.app_id, user))
    browser.wait(lambda b: b.counts(), "unread_count")

    # The one being handed out is not in the live feed yet: the feed brings it, positioned.
    expected = sorted(sent, key=lambda i: i.delivery_id)
    names = [name for name, _data in browser.received]
    assert names == ["notification"] * len(expected) + ["unread_count"]
    assert browser.ids() == [i.delivery_id for i in expected]
    assert browser.counts() == [len(sent) + len(sending) + len(delivered)]

    first = browser.notifications()[0]
    with runtime.sessions() as session:
        delivery = session.get(Delivery, expected[0].delivery_id)
        message = session.get(Message, expected[0].message_id)
        assert delivery is not None and message is not None
    # Written straight into the store, it never went through the live feed: no position.
    assert first == {
        **notification_payload(
            delivery.id, message.id, message.content, message.category, delivery.created_at
        ),
        "position": None,
    }
    assert set(first) == {
        "id",
        "message_id",
        "title",
        "body",
        "url",
        "data",
        "category",
        "created_at",
        "position",
    }


def test_a_notification_being_handed_out_as_a_tab_connects_reaches_it_with_its_position(
    gateway: Gateway, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    user = new_user()
    [item] = add_items(runtime, tenant.app_id, user, 1, status="sending")
    # In the feed before the tab joined its room, and not yet settled in the store.
    result = WebChannel(context_for(gateway.settings, "web")).send(outbound(runtime, item))
    browser = browsers().connect(token_for(gateway.settings, tenant.app_id, user))
    browser.wait(lambda b: b.counts(), "unread_count")
    assert [(n["id"], n["position"]) for n in browser.notifications()] == [
        (item.delivery_id, result.receipt)
    ]


def test_one_dispatch_batch_is_replayed_and_listed_in_message_order(
    gateway: Gateway, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    # One batch: same delivery time, and delivery ids (random within a millisecond) that
    # happen to sort against the order in which the messages were sent.
    user = new_user()
    items = add_items(runtime, tenant.app_id, user, 3)
    base = utcnow()
    with runtime.sessions() as session, session.begin():
        for age, item in enumerate(items):
            message = session.get(Message, item.message_id)
            assert message is not None
            message.created_at = base - timedelta(seconds=age)
    oldest_first = [i.delivery_id for i in reversed(items)]

    browser = browsers().connect(token_for(gateway.settings, tenant.app_id, user))
    browser.wait_count(3)
    assert browser.ids() == oldest_first

    headers = _auth(gateway, tenant.app_id, user)
    listed = httpx.get(f"{gateway.url}/v1/inbox", headers=headers).json()["items"]
    assert [i["id"] for i in listed] == oldest_first[::-1]


def test_acknowledged_items_are_not_replayed_again(
    gateway: Gateway, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    user = new_user()
    items = add_items(runtime, tenant.app_id, user, 3)
    token = token_for(gateway.settings, tenant.app_id, user)

    first = browsers().connect(token)
    first.wait_count(3)
    answer = first.call("ack", {"ids": first.ids()})
    assert answer == {"ok": True, "updated": 3}
    assert set(statuses(runtime, items).values()) == {"delivered"}
    assert events_of(runtime, items[0]) == ["delivered"]
    with runtime.sessions() as session:
        delivery = session.get(Delivery, items[0].delivery_id)
        assert delivery is not None and delivery.delivered_at is not None
    # Acknowledging again changes nothing and writes no second event.
    assert first.call("ack", {"ids": first.ids()}) == {"ok": True, "updated": 0}
    assert events_of(runtime, items[0]) == ["delivered"]
    first.close()

    again = browsers().connect(token)
    again.wait(lambda b: b.counts(), "unread_count")
    assert again.notifications() == []
    assert again.counts() == [3]  # delivered is still unread

    # Reading keeps the time it was delivered.
    assert again.call("read", {"ids": [items[0].delivery_id]})["updated"] == 1
    with runtime.sessions() as session:
        read = session.get(Delivery, items[0].delivery_id)
        assert read is not None and read.status == "read"
        assert read.delivered_at == delivery.delivered_at
        assert read.read_at is not None and read.read_at >= read.delivered_at


def test_the_replay_is_bounded_and_the_rest_follows_once_acknowledged(
    gateway: Gateway, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    from ws_gateway.inbox import REPLAY_LIMIT

    user = new_user()
    items = add_many(runtime, tenant.app_id, user, REPLAY_LIMIT + 1)
    token = token_for(gateway.settings, tenant.app_id, user)
    first = browsers().connect(token)
    first.wait(lambda b: b.counts(), "unread_count")
    assert first.ids() == items[:REPLAY_LIMIT]
    assert first.counts() == [REPLAY_LIMIT + 1]
    for start in range(0, REPLAY_LIMIT, 250):
        assert first.call("ack", {"ids": first.ids()[start : start + 250]})["updated"] == 250
    first.close()

    second = browsers().connect(token)
    second.wait(lambda b: b.counts(), "unread_count")
    assert second.ids() == items[REPLAY_LIMIT:]


def test_read_pushes_the_unread_count_to_every_socket_of_the_user(
    gateway: Gateway, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    user = new_user()
    items = add_items(runtime, tenant.app_id, user, 3)
    token = token_for(gateway.settings, tenant.app_id, user)
    tab1 = browsers().connect(token)
    tab2 = browsers().connect(token)
    tab1.wait_count(3)
    tab2.wait_count(3)

    answer = tab1.call("read", {"ids": [items[0].delivery_id]})
    assert answer == {"ok": True, "updated": 1, "unread_count": 2}
    tab1.wait_count(2)
    tab2.wait_count(2)
    assert statuses(runtime, items)[items[0].delivery_id] == "read"
    with runtime.sessions() as session:
        delivery = session.get(Delivery, items[0].delivery_id)
        assert delivery is not None
        assert delivery.read_at is not None and delivery.delivered_at is not None
    assert events_of(runtime, items[0]) == ["read"]

    assert tab2.call("read", {"all": True}) == {"ok": True, "updated": 2, "unread_count": 0}
    tab1.wait_count(0)
    tab2.wait_count(0)
    assert set(statuses(runtime, items).values()) == {"read"}


def test_live_notifications_reach_the_connected_user(
    gateway: Gateway, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    user = new_user()
    browser = browsers().connect(token_for(gateway.settings, tenant.app_id, user))
    browser.wait_count(0)
    [item] = add_items(runtime, tenant.app_id, user)
    emit_live(runtime, gateway.settings, item)
    browser.wait(lambda b: item.delivery_id in b.ids(), "the live notification")
    [live] = browser.notifications()
    assert live["title"] == item.title
    assert live["message_id"] == item.message_id
    assert browser.call("ack", {"ids": [item.delivery_id]}) == {"ok": True, "updated": 1}
    # The ack pushes the count: the new item is unread.
    browser.wait_count(1)


def test_one_user_never_sees_or_touches_another_users_or_apps_items(
    gateway: Gateway, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    from producer_api.api_keys import create_app_with_key

    with runtime.sessions() as session, session.begin():
        other_app = create_app_with_key(session, f"other-{uuid.uuid4().hex[:6]}")
    user_a, user_b = new_user(), new_user()
    mine = add_items(runtime, tenant.app_id, user_a, 2)
    other_user = add_items(runtime, tenant.app_id, user_b, 2)
    # The same user id in another app is another person.
    other_app_items = add_items(runtime, other_app.app_id, user_a, 2)
    foreign = other_user + other_app_items

    browser = browsers().connect(token_for(gateway.settings, tenant.app_id, user_a))
    browser.wait_count(2)
    assert browser.ids() == [i.delivery_id for i in mine]

    # Live: the foreign items are published first; once ours arrives, theirs would have too.
    for item in foreign:
        emit_live(runtime, gateway.settings, item)
    [live] = add_items(runtime, tenant.app_id, user_a)
    emit_live(runtime, gateway.settings, live)
    browser.wait(lambda b: live.delivery_id in b.ids(), "our own live notification")
    assert not {i.delivery_id for i in foreign} & set(browser.ids())

    foreign_ids = [i.delivery_id for i in foreign]
    assert browser.call("ack", {"ids": foreign_ids}) == {"ok": True, "updated": 0}
    answer = browser.call("read", {"ids": foreign_ids})
    assert answer == {"ok": True, "updated": 0, "unread_count": 3}
    assert browser.call("read", {"all": True})["updated"] == 3
    assert set(statuses(runtime, foreign).values()) == {"sent"}
    assert all(events_of(runtime, item) == [] for item in foreign)

    headers = {"Authorization": f"Bearer {token_for(gateway.settings, tenant.app_id, user_a)}"}
    listed = httpx.get(f"{gateway.url}/v1/inbox", headers=headers).json()["items"]
    assert {i["id"] for i in listed} == {i.delivery_id for i in [*mine, live]}


@pytest.mark.parametrize(
    ("event", "args"),
    [
        ("ack", ()),
        ("ack", ("nope",)),
        ("ack", ({"ids": "dlv_x"},)),
        ("ack", ({"ids": [1, 2]},)),
        ("ack", ({"ids": ["dlv_x"] * 1001},)),
        ("ack", ({"ids": ["x" * 41]},)),
        ("ack", ({"ids": [], "extra": True},)),
        ("ack", ({"all": True},)),
        ("read", ({},)),
        ("read", ({"all": False},)),
        ("read", ({"ids": ["dlv_x"], "all": True},)),
        ("read", ([1, 2, 3],)),
        ("read", ({"ids": [None]},)),
    ],
)
def test_bad_event_payloads_get_an_error_ack_and_the_socket_lives_on(
    event: str, args: tuple[Any, ...], gateway: Gateway, tenant: NewApp, browsers: Any
) -> None:
    browser = browsers().connect(token_for(gateway.settings, tenant.app_id, new_user()))
    answer = browser.client.call(event, *args, timeout=TIMEOUT) if args else browser.call(event)
    assert answer["ok"] is False and answer["error"] == "invalid"
    assert browser.call("ack", {"ids": [new_id("dlv")] * 1000}) == {"ok": True, "updated": 0}


def test_sending_several_arguments_is_invalid_too(
    gateway: Gateway, tenant: NewApp, browsers: Any
) -> None:
    browser = browsers().connect(token_for(gateway.settings, tenant.app_id, new_user()))
    answer = browser.call("read", ({"ids": []}, {"ids": []}))
    assert answer["ok"] is False
    assert browser.client.connected


# -- inbox REST --------------------------------------------------------------------------------


def _auth(gateway: Gateway, app_id: str, user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(gateway.settings, app_id, user_id)}"}


def test_inbox_lists_newest_first_with_unread_filter_and_pages(
    gateway: Gateway, runtime: Runtime, tenant: NewApp
) -> None:
    user = new_user()
    read = add_items(runtime, tenant.app_id, user, 2, status="read")
    unread = add_items(runtime, tenant.app_id, user, 3, status="sent")
    add_items(runtime, tenant.app_id, user, 1, status="pending")  # not shown: not sent yet
    headers = _auth(gateway, tenant.app_id, user)
    newest_first = sorted(read + unread, key=lambda i: i.delivery_id, reverse=True)

    response = httpx.get(f"{gateway.url}/v1/inbox", headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert [i["id"] for i in body["items"]] == [i.delivery_id for i in newest_first]
    assert body["next_before"] is None
    first = body["items"][0]
    assert {"id", "message_id", "title", "body", "url", "data", "category", "created_at"} <= set(
        first
    )
    assert {i["status"] for i in body["items"]} == {"read", "sent"}
    assert all(i["read"] == (i["status"] == "read") for i in body["items"])

    only_unread = httpx.get(f"{gateway.url}/v1/inbox?unread=1", headers=headers).json()
    assert [i["id"] for i in only_unread["items"]] == [
        i.delivery_id for i in sorted(unread, key=lambda i: i.delivery_id, reverse=True)
    ]

    seen: list[str] = []
    before: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"before": before} if before else {})}
        page = httpx.get(f"{gateway.url}/v1/inbox", headers=headers, params=params).json()
        assert len(page["items"]) <= 2
        seen += [i["id"] for i in page["items"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == [i.delivery_id for i in newest_first]


def test_inbox_read_and_unread_count(
    gateway: Gateway, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    user = new_user()
    items = add_items(runtime, tenant.app_id, user, 4)
    headers = _auth(gateway, tenant.app_id, user)
    browser = browsers().connect(token_for(gateway.settings, tenant.app_id, user))
    browser.wait_count(4)

    count = httpx.get(f"{gateway.url}/v1/inbox/unread-count", headers=headers)
    assert count.status_code == 200 and count.json() == {"count": 4}

    response = httpx.post(
        f"{gateway.url}/v1/inbox/read", headers=headers, json={"ids": [items[1].delivery_id]}
    )
    assert response.status_code == 200
    assert response.json() == {"updated": 1, "unread_count": 3}
    browser.wait_count(3)  # REST reads reach the sockets too
    assert events_of(runtime, items[1]) == ["read"]

    response = httpx.post(f"{gateway.url}/v1/inbox/read", headers=headers, json={"all": True})
    assert response.json() == {"updated": 3, "unread_count": 0}
    browser.wait_count(0)
    assert httpx.get(f"{gateway.url}/v1/inbox/unread-count", headers=headers).json() == {"count": 0}
    assert set(statuses(runtime, items).values()) == {"read"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/inbox"), ("GET", "/v1/inbox/unread-count"), ("POST", "/v1/inbox/read")],
)
@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer garbage", "Basic abc"])
def test_inbox_needs_a_browser_token(
    method: str, path: str, authorization: str | None, gateway: Gateway
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, gateway.url + path, headers=headers, json={"all": True})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["status"] == 401


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=abc", "limit"),
        ("unread=maybe", "unread"),
        ("before=" + "x" * 41, "before"),
        ("colour=blue", "colour"),
    ],
)
def test_inbox_rejects_bad_query_parameters(
    query: str, field: str, gateway: Gateway, tenant: NewApp
) -> None:
    response = httpx.get(
        f"{gateway.url}/v1/inbox?{query}", headers=_auth(gateway, tenant.app_id, new_user())
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert field in response.json()["errors"]


@pytest.mark.parametrize(
    "body",
    [{}, {"ids": "x"}, {"ids": [1]}, {"all": False}, {"ids": ["a"] * 1001}, {"x": 1}, [1]],
)
def test_inbox_read_rejects_bad_bodies(body: Any, gateway: Gateway, tenant: NewApp) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/inbox/read",
        headers=_auth(gateway, tenant.app_id, new_user()),
        json=body,
    )
    assert response.status_code == 422
    assert response.json()["errors"]


def test_inbox_answers_cross_origin_preflights(gateway: Gateway) -> None:
    response = httpx.options(
        f"{gateway.url}/v1/inbox",
        headers={
            "Origin": "http://shop.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "Authorization" in response.headers["access-control-allow-headers"]


def test_inbox_read_needs_a_json_body(gateway: Gateway, tenant: NewApp) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/inbox/read",
        headers=_auth(gateway, tenant.app_id, new_user()),
        content=b"not json",
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


def test_inbox_read_takes_a_json_body_sent_without_a_content_type(
    gateway: Gateway, runtime: Runtime, tenant: NewApp
) -> None:
    # As `curl -d '{...}'` sends it (form-encoded), or a page's fetch() with a plain string body.
    user = new_user()
    items = add_items(runtime, tenant.app_id, user, 2)
    raw = json.dumps({"ids": [items[0].delivery_id]}).encode()
    for content_type in (None, "application/x-www-form-urlencoded", "text/plain"):
        headers = _auth(gateway, tenant.app_id, user)
        if content_type:
            headers["Content-Type"] = content_type
        response = httpx.post(f"{gateway.url}/v1/inbox/read", headers=headers, content=raw)
        assert response.status_code == 200, (content_type, response.text)
    assert statuses(runtime, items) == {items[0].delivery_id: "read", items[1].delivery_id: "sent"}


# -- the gateway's OpenAPI document ------------------------------------------------------------


def test_the_gateway_documents_its_inbox_in_its_own_openapi_document(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.url}/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert {"/v1/inbox", "/v1/inbox/read", "/v1/inbox/unread-count"} <= set(paths)
    scheme = document["components"]["securitySchemes"]["browserToken"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    responses = document["components"]["responses"]
    for path, method in [
        ("/v1/inbox", "get"),
        ("/v1/inbox/read", "post"),
        ("/v1/inbox/unread-count", "get"),
    ]:
        operation = paths[path][method]
        assert operation["security"] == [{"browserToken": []}]
        assert "200" in operation["responses"]
        for status in ("401", "422"):
            name = operation["responses"][status]["$ref"].rsplit("/", 1)[1]
            assert set(responses[name]["content"]) == {"application/problem+json"}
    assert "requestBody" in paths["/v1/inbox/read"]["post"]
    assert {p["name"] for p in paths["/v1/inbox"]["get"]["parameters"]} == {
        "unread",
        "limit",
        "before",
    }


def test_the_gateway_serves_swagger_ui_from_its_own_files(gateway: Gateway) -> None:
    docs = httpx.get(f"{gateway.url}/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in docs.text
    scripts = re.findall(r'(?:src|href)="(/[^"]+)"', docs.text)
    assert scripts, docs.text
    for path in scripts:
        asset = httpx.get(f"{gateway.url}{path}")
        assert asset.status_code == 200, path
        assert asset.content


# -- demo page, health, metrics ----------------------------------------------------------------


def test_demo_page_with_a_token(gateway: Gateway, tenant: NewApp) -> None:
    user = new_user()
    token = token_for(gateway.settings, tenant.app_id, user)
    response = httpx.get(f"{gateway.url}/demo", params={"token": token})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    page = response.text
    assert 'src="/static/socket.io.min.js"' in page
    assert 'src="/static/demo.js"' in page
    assert f'data-token="{token}"' in page
    assert user in page
    script = httpx.get(f"{gateway.url}/static/demo.js")
    assert script.status_code == 200
    assert '"ack"' in script.text and '"read"' in script.text
    assert '"unauthorized"' in script.text and '"error"' in script.text


@pytest.mark.parametrize("token", [None, "", "garbage"])
def test_demo_page_without_a_valid_token_is_401(token: str | None, gateway: Gateway) -> None:
    params = {"token": token} if token is not None else {}
    response = httpx.get(f"{gateway.url}/demo", params=params)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/html")
    assert "401 Unauthorized" in response.text
    assert "socket.io.min.js" not in response.text


def test_health_readiness_and_metrics(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"store": "ok", "redis": "ok"}
    metrics = httpx.get(f"{gateway.url}/metrics")
    assert metrics.status_code == 200
    assert "omnipush_gateway_connects_total" in metrics.text
    assert "omnipush_gateway_connected_sockets" in metrics.text


def test_the_gateway_runs_on_gevent_with_a_cooperative_store(gateway: Gateway) -> None:
    gateway.service.wait_for_log("gateway.ready")
    [line] = [line for line in gateway.service.lines if "gateway.ready" in line]
    ready = json.loads(line)
    assert ready["async_mode"] == "gevent"
    assert ready["cooperative_store"] is True
    assert "MonkeyPatchWarning" not in gateway.service.output()


# -- the app factory in process ----------------------------------------------------------------


def test_create_app_in_process_uses_threading_and_connects_nothing(
    runtime: Runtime, tenant: NewApp
) -> None:
    from ws_gateway.app import create_app, socketio_of

    app = create_app(runtime=runtime)
    socketio_server = socketio_of(app).server
    assert socketio_of(app).async_mode == "threading"
    assert not socketio_server.manager_initialized  # no Redis listener until a client connects
    client = app.test_client()
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/v1/inbox").status_code == 401
    user = new_user()
    add_items(runtime, tenant.app_id, user, 2)
    token = token_for(runtime.settings, tenant.app_id, user)
    response = client.get("/v1/inbox/unread-count", headers={"Authorization": f"Bearer {token}"})
    assert response.json == {"count": 2}
