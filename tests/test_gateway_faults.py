"""The gateway when PostgreSQL restarts: a gateway process whose store is behind a fault proxy.

`FaultProxy.drop()` closes every pooled connection, as a server restart does; the gateway's
next replay, ack, read or inbox request must still succeed (on a fresh connection), and a
replay that cannot reach the store at all must tell the browser so that it can reconnect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from producer_api.api_keys import NewApp
from shared.runtime import Runtime
from shared.settings import Settings
from tests.fault_proxy import FaultProxy
from tests.gateway_support import Browser, Gateway, add_items, new_user, running_gateway, token_for


@pytest.fixture(scope="module")
def store_proxy(inprocess_settings: Settings) -> Iterator[FaultProxy]:
    url = make_url(inprocess_settings.database_url)
    with FaultProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def gateway(inprocess_settings: Settings, store_proxy: FaultProxy) -> Iterator[Gateway]:
    """A gateway whose store is reached through `store_proxy` (its pool is warm once ready:
    the readiness probe's connect replayed)."""
    settings = inprocess_settings
    proxied = make_url(settings.database_url).set(host="127.0.0.1", port=store_proxy.port)
    own = settings.with_overrides(database_url=proxied.render_as_string(hide_password=False))
    with running_gateway(own) as running:
        yield running


@pytest.fixture
def browsers(gateway: Gateway, store_proxy: FaultProxy) -> Iterator[Callable[[], Browser]]:
    made: list[Browser] = []

    def make() -> Browser:
        browser = Browser(gateway.url)
        made.append(browser)
        return browser

    yield make
    store_proxy.resume()
    for browser in made:
        browser.close()


def test_after_a_database_restart_replay_ack_read_and_inbox_work_at_once(
    gateway: Gateway, store_proxy: FaultProxy, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    user = new_user()
    items = add_items(runtime, tenant.app_id, user, 2)
    ids = [item.delivery_id for item in items]
    token = token_for(gateway.settings, tenant.app_id, user)
    warm = browsers().connect(token)
    warm.wait_count(2)
    warm.close()

    store_proxy.drop()
    browser = browsers().connect(token)
    browser.wait_count(2)
    assert browser.ids() == ids
    assert browser.events("error") == []

    store_proxy.drop()
    assert browser.call("ack", {"ids": ids}) == {"ok": True, "updated": 2}

    headers = {"Authorization": f"Bearer {token}"}
    store_proxy.drop()
    listed = httpx.get(f"{gateway.url}/v1/inbox", headers=headers)
    assert listed.status_code == 200
    assert {item["id"] for item in listed.json()["items"]} == set(ids)

    store_proxy.drop()
    count = httpx.get(f"{gateway.url}/v1/inbox/unread-count", headers=headers)
    assert (count.status_code, count.json()) == (200, {"count": 2})

    store_proxy.drop()
    read = httpx.post(f"{gateway.url}/v1/inbox/read", headers=headers, json={"all": True})
    assert (read.status_code, read.json()) == (200, {"updated": 2, "unread_count": 0})

    store_proxy.drop()
    assert browser.call("read", {"ids": ids}) == {"ok": True, "updated": 0, "unread_count": 0}


def test_a_replay_that_cannot_reach_the_store_tells_the_browser(
    gateway: Gateway, store_proxy: FaultProxy, runtime: Runtime, tenant: NewApp, browsers: Any
) -> None:
    user = new_user()
    [item] = add_items(runtime, tenant.app_id, user)
    token = token_for(gateway.settings, tenant.app_id, user)

    store_proxy.drop()
    store_proxy.refuse()
    browser = browsers().connect(token)
    browser.wait(lambda b: b.events("error"), "the error event")
    assert browser.events("error") == [{"message": "replay failed, reconnect to retry"}]
    assert browser.notifications() == []

    # Reconnecting once the store is back replays as usual.
    store_proxy.resume()
    browser.close()
    again = browsers().connect(token)
    again.wait_count(1)
    assert again.ids() == [item.delivery_id]
