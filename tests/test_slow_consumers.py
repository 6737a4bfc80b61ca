"""A browser that stops reading costs the gateway a bounded amount, then its connection; the tabs
that read get everything, whole, however large and however fast it comes.

Through a real gateway process (gunicorn's gevent worker): notifications are appended to the
live feed as the web worker does. A socket that reads nothing is a raw websocket that does the
Engine.IO and Socket.IO handshakes and then never reads again, with a small receive buffer so
that the gateway's writer blocks soon.
"""

from __future__ import annotations

import functools
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import websocket

from producer_api.api_keys import NewApp
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import new_tenant
from tests.gateway_support import (
    Browser,
    Gateway,
    append_to_feed,
    new_user,
    running_gateway,
    token_for,
)
from tests.scraped import key, scrape
from tests.stack import wait_until
from ws_gateway.slow_consumers import MAX_PENDING, WRITE_PATIENCE_SECONDS, PatientSocket

TIMEOUT = 60.0
BODY = "x" * 8192


@pytest.fixture
def app(inprocess_runtime: Runtime) -> NewApp:
    return new_tenant(inprocess_runtime)


@pytest.fixture
def gateway(settings: Settings) -> Iterator[Gateway]:
    with running_gateway(settings) as running:
        yield running


def append(settings: Settings, app_id: str, user_id: str, count: int, body: str) -> list[str]:
    """Append `count` notifications for the user to the live feed; their ids, in order."""
    return append_to_feed(settings, app_id, [user_id] * count, {"title": "burst", "body": body})


@contextmanager
def silent_socket(gateway: Gateway, app_id: str, user_id: str) -> Iterator[websocket.WebSocket]:
    """A Socket.IO connection for the user that, once connected, reads nothing more."""
    url = gateway.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    ws = websocket.create_connection(
        url, timeout=10, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
    )
    try:
        assert str(ws.recv()).startswith("0{"), "the Engine.IO open packet"
        ws.send("40" + json.dumps({"token": token_for(gateway.settings, app_id, user_id)}))
        assert str(ws.recv()).startswith("40{"), "the Socket.IO connect answer"
        yield ws
    finally:
        ws.close(timeout=1)


def sample(gateway: Gateway, name: str, **labels: str) -> float:
    return scrape(f"{gateway.url}/metrics").get(key(name, **labels), 0.0)


def cut_off(gateway: Gateway, reason: str) -> float:
    return sample(gateway, "omnipush_gateway_slow_consumers_total", reason=reason)


def has_at_least(browser: Browser, count: int) -> bool:
    return len(browser.ids()) >= count


def connection_ended(ws: websocket.WebSocket) -> bool:
    """Whether reading on from where the socket stopped reaches the end of the connection."""
    try:
        while True:
            opcode, _data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return True
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return True
    except websocket.WebSocketTimeoutException:
        return False


# -- the socket's side ---------------------------------------------------------------------


def test_a_patient_socket_gives_up_a_send_that_waits_on_a_peer_that_reads_nothing() -> None:
    ours, peer = socket.socketpair()
    transport = PatientSocket(ours)
    failure: list[BaseException] = []

    def send_more_than_fits() -> None:
        try:
            transport.send(b"x" * (64 << 20))
        except OSError as error:
            failure.append(error)

    sender = threading.Thread(target=send_more_than_fits)
    sender.start()
    try:
        wait_until(lambda: transport.stalled_for(time.monotonic()) > 0.2, 10, "the send to stall")
        transport.abort()
        sender.join(10)
        assert not sender.is_alive()
        assert [type(error) for error in failure] == [BrokenPipeError]
        with pytest.raises(BrokenPipeError):
            transport.send(b"after")
        assert transport.stalled_for(time.monotonic()) == 0.0
    finally:
        ours.close()
        peer.close()


# -- through a gateway process -------------------------------------------------------------


def test_a_tab_that_reads_gets_a_burst_of_large_notifications_whole_and_in_order(
    settings: Settings, app: NewApp, gateway: Gateway
) -> None:
    user = new_user()
    browser = Browser(gateway.url).connect(token_for(settings, app.app_id, user))
    try:
        browser.wait(lambda b: b.counts(), "the unread count after the replay")
        ids = append(settings, app.app_id, user, 600, BODY)
        wait_until(lambda: len(browser.ids()) >= len(ids), TIMEOUT, "the whole burst")
        assert browser.ids() == ids
        assert all(n["body"] == BODY for n in browser.notifications())
        assert browser.disconnects == []
    finally:
        browser.close()


def test_a_socket_that_reads_nothing_is_cut_off_while_the_users_other_tab_gets_everything(
    settings: Settings, app: NewApp, gateway: Gateway
) -> None:
    user = new_user()
    reader = Browser(gateway.url).connect(token_for(settings, app.app_id, user))
    try:
        reader.wait(lambda b: b.counts(), "the unread count after the replay")
        with silent_socket(gateway, app.app_id, user) as silent:
            assert sample(gateway, "omnipush_gateway_connected_sockets") == 2
            sent: list[str] = []
            # In steps the reading tab keeps up with, until the silent one has too many waiting.
            while cut_off(gateway, "backlog") == 0:
                assert len(sent) < 4 * MAX_PENDING, "the silent socket was never cut off"
                sent += append(settings, app.app_id, user, 100, BODY)
                wait_until(functools.partial(has_at_least, reader, len(sent)), TIMEOUT, "the tab")
            assert sample(gateway, "omnipush_gateway_connected_sockets") == 1
            assert len(sent) > MAX_PENDING
            assert cut_off(gateway, "stalled") == 0
            silent.settimeout(10)
            assert connection_ended(silent), "the silent socket's connection was dropped"
        more = append(settings, app.app_id, user, 10, "after")
        wait_until(lambda: len(reader.ids()) >= len(sent) + 10, TIMEOUT, "the reading tab")
        assert reader.ids() == sent + more
        assert reader.disconnects == []
    finally:
        reader.close()


def test_a_socket_whose_connection_stays_full_is_cut_off_after_the_write_patience(
    settings: Settings, app: NewApp, gateway: Gateway
) -> None:
    user = new_user()
    with silent_socket(gateway, app.app_id, user) as silent:
        # Far fewer than MAX_PENDING packets, but more bytes than the connection holds.
        append(settings, app.app_id, user, 100, "y" * 200_000)
        started = time.monotonic()
        wait_until(
            lambda: cut_off(gateway, "stalled") == 1,
            WRITE_PATIENCE_SECONDS + 15,
            "the stalled socket to be cut off",
        )
        assert time.monotonic() - started >= WRITE_PATIENCE_SECONDS - 1
        assert sample(gateway, "omnipush_gateway_connected_sockets") == 0
        assert cut_off(gateway, "backlog") == 0
        silent.settimeout(10)
        assert connection_ended(silent)
