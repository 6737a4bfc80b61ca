"""A gateway restart: every browser it held reconnects at once, and each resumes where it stopped
(exactly what it missed, then live) within 30 s, with no replay failing for want of the store.

The browsers are official socket.io-client sockets in one Node.js process (`socket_crowd.js`),
reconnecting by themselves with `since` as the demo page does. `bench/gateway.py` runs the same
with 10,000 sockets.
"""

from __future__ import annotations

import time

import pytest

from producer_api.api_keys import NewApp
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import new_tenant
from tests.gateway_support import new_user, notify_each, running_gateway, token_for
from tests.scraped import key, scrape
from tests.socket_crowd import SocketCrowd, socket_crowd
from tests.stack import free_port, wait_until

SOCKETS = 1000
RESUME_SECONDS = 30.0
TIMEOUT = 60.0


@pytest.fixture
def app(inprocess_runtime: Runtime) -> NewApp:
    return new_tenant(inprocess_runtime)


def each_received(crowd: SocketCrowd, count: int) -> bool:
    return all(s["received"] >= count for s in crowd.state()["sockets"])


def test_a_crowd_reconnecting_after_a_gateway_restart_resumes_exactly_where_it_stopped(
    inprocess_settings: Settings, inprocess_runtime: Runtime, app: NewApp
) -> None:
    settings, runtime = inprocess_settings, inprocess_runtime
    users = [new_user() for _ in range(SOCKETS)]
    tokens = [token_for(settings, app.app_id, user, ttl=900) for user in users]
    bind = f"127.0.0.1:{free_port()}"
    with socket_crowd() as crowd:
        with running_gateway(settings, bind) as first:
            assert crowd.open(first.url, tokens, reconnect=True, timeout=TIMEOUT) == SOCKETS
            seen = notify_each(runtime, settings, app.app_id, users)
            wait_until(lambda: each_received(crowd, 1), TIMEOUT, "each socket's first one")
        wait_until(lambda: crowd.state()["connected"] == 0, TIMEOUT, "every socket to notice")
        missed = notify_each(runtime, settings, app.app_id, users)

        restarted = time.monotonic()
        with running_gateway(settings, bind) as second:
            wait_until(lambda: each_received(crowd, 2), RESUME_SECONDS, "every socket to resume")
            resumed_after = time.monotonic() - restarted
            sockets = crowd.state(ids=True)["sockets"]
            assert [s["ids"] for s in sockets] == [
                [first_id, missed_id] for first_id, missed_id in zip(seen, missed, strict=True)
            ], "each socket got exactly what it missed, once"
            # A socket may also have reconnected to the first gateway while it was stopping.
            assert all(s["connected"] and s["connects"] >= 2 for s in sockets)
            samples = scrape(f"{second.url}/metrics")
            assert samples.get(key("omnipush_gateway_replay_failures_total"), 0) == 0
            assert samples[key("omnipush_gateway_connected_sockets")] == SOCKETS
            live = notify_each(runtime, settings, app.app_id, users)
            wait_until(lambda: each_received(crowd, 3), TIMEOUT, "the next ones, live")
            assert [s["ids"][-1] for s in crowd.state(ids=True)["sockets"]] == live
    assert resumed_after < RESUME_SECONDS
