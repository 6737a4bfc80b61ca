"""The live feed survives Redis: a gateway process whose Redis is paused, dropped or restarted
empty still gets every notification to every connected tab exactly once, in order, with no
tab reconnecting.

The gateway reaches Redis through a proxy the test owns; notifications are appended as the web
worker does (`WebChannel.send`, straight to Redis), with their deliveries in the store as the
worker leaves them (`sent`). The restart is of a Redis server the test starts for itself.
"""

from __future__ import annotations

import functools
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
import socketio

from channels.base import Outcome
from channels.web import WebChannel
from producer_api.api_keys import NewApp
from shared.live_feed import feed_key, is_position, position_key
from shared.models import Delivery
from shared.runtime import Runtime
from shared.settings import Settings
from tests.channel_harness import context_for, delivery_for
from tests.conftest import new_tenant
from tests.fault_proxy import FaultProxy
from tests.gateway_support import (
    Browser,
    Gateway,
    Item,
    add_items,
    emit_live,
    new_user,
    notify_each,
    running_gateway,
    token_for,
)
from tests.stack import free_port, wait_until
from ws_gateway.feed import SentIds, identity_of_room
from ws_gateway.inbox import REPLAY_LIMIT

TIMEOUT = 30.0


# -- the parts ---------------------------------------------------------------------------------


def test_a_socket_is_sent_each_id_once_and_remembers_only_the_latest() -> None:
    sent = SentIds(limit=2)
    assert [sent.first_time("a", i) for i in ("d1", "d2", "d1")] == [True, True, False]
    assert sent.first_time("b", "d1"), "another socket has its own memory"
    sent.first_time("a", "d3")  # d1 falls out
    assert sent.first_time("a", "d1")
    sent.forget("a")
    assert sent.first_time("a", "d3")


@pytest.mark.parametrize(
    ("room", "identity"),
    [
        ("user:app_1:alice", ("app_1", "alice")),
        ("user:app_1:urn:team:7", ("app_1", "urn:team:7")),
        ("user:app_1:", None),
        ("probe", None),
    ],
    ids=["user", "user id with colons", "no user", "not a user's room"],
)
def test_a_room_names_its_app_and_user(room: str, identity: tuple[str, str] | None) -> None:
    found = identity_of_room(room)
    assert (None if found is None else (found.app_id, found.user_id)) == identity


def test_positions_order_by_time_then_sequence() -> None:
    ids = ["1700000000001-0", "1700000000000-12", "1700000000000-2", "0-0"]
    assert all(is_position(i) for i in ids)
    assert not any(is_position(v) for v in ("", "12", "1-2-3", "a-1", 7, None, "1-" + "9" * 21))
    assert sorted(ids, key=position_key) == [
        "0-0",
        "1700000000000-2",
        "1700000000000-12",
        "1700000000001-0",
    ]


# -- through a gateway process -------------------------------------------------------------------


class OwnRedis:
    """A Redis server this test starts, on a port of its own, without persistence (as the
    machine's), so that a restart loses everything it held."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--logfile", ""),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _pings(client), 10, "the test's Redis to answer")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def gateway_behind(proxy: FaultProxy, settings: Settings) -> Iterator[Gateway]:
    with running_gateway(settings.with_overrides(redis_url=f"redis://{proxy.address}/0")) as gw:
        yield gw


@contextmanager
def tabs(gateway: Gateway, app_id: str, users: list[str], per_user: int) -> Iterator[list[Browser]]:
    """`per_user` connected tabs for each of `users`, each past its connect's replay."""
    made = [Browser(gateway.url) for _user in users for _tab in range(per_user)]
    try:
        for index, browser in enumerate(made):
            browser.connect(token_for(gateway.settings, app_id, users[index // per_user]))
            browser.wait(lambda b: b.counts(), "the unread count after the replay")
        yield made
    finally:
        for browser in made:
            browser.close()


def feed(
    runtime: Runtime, emitter: Settings, app_id: str, users: list[str], count: int
) -> Callable[[], list[Item]]:
    """A function that writes and appends the next `count` notifications, round robin over
    `users`; the items, in the order appended."""

    def next_ones() -> list[Item]:
        items = [add_items(runtime, app_id, users[n % len(users)])[0] for n in range(count)]
        for item in items:
            emit_live(runtime, emitter, item)
        return items

    return next_ones


def has_at_least(browser: Browser, count: int) -> bool:
    return len(browser.ids()) >= count


def assert_each_tab_got_its_users_items_once_in_order(
    browsers: list[Browser], users: list[str], per_user: int, items: list[Item]
) -> None:
    for index, browser in enumerate(browsers):
        user = users[index // per_user]
        expected = [item.delivery_id for item in items if item.user_id == user]
        wait_until(
            functools.partial(has_at_least, browser, len(expected)),
            TIMEOUT,
            f"tab {index} to get its {len(expected)} notifications",
        )
        assert browser.ids() == expected, f"tab {index}: missing, doubled or out of order"
        assert browser.disconnects == [], f"tab {index} was disconnected"


@pytest.fixture
def app(inprocess_runtime: Runtime) -> NewApp:
    return new_tenant(inprocess_runtime)


USERS = 2
TABS = 2
PAUSE_SECONDS = 3.0


@pytest.mark.parametrize("fault", ["pause", "drop"])
def test_a_paused_or_dropped_connection_to_redis_loses_no_notification(
    fault: str, inprocess_settings: Settings, inprocess_runtime: Runtime, app: NewApp
) -> None:
    users = [new_user() for _ in range(USERS)]
    target = redis.Redis.from_url(inprocess_settings.redis_url).connection_pool.connection_kwargs
    with (
        FaultProxy(target["host"], target["port"]) as proxy,
        gateway_behind(proxy, inprocess_settings) as gateway,
        tabs(gateway, app.app_id, users, TABS) as browsers,
    ):
        appended = feed(inprocess_runtime, inprocess_settings, app.app_id, users, 10)
        items = appended()
        if fault == "pause":
            # The gateway's read waits on a Redis that says nothing, longer than it blocks.
            proxy.hang()
            items += appended()
            time.sleep(PAUSE_SECONDS)  # how long the fault lasts, not a wait for an event
            proxy.resume()
        else:
            proxy.drop()
            items += appended()
        items += appended()
        assert_each_tab_got_its_users_items_once_in_order(browsers, users, TABS, items)


def test_redis_restarted_empty_mid_stream_loses_no_notification(
    own_redis: OwnRedis, inprocess_settings: Settings, inprocess_runtime: Runtime, app: NewApp
) -> None:
    users = [new_user() for _ in range(USERS)]
    emitter = inprocess_settings.with_overrides(redis_url=own_redis.url)
    with (
        FaultProxy("127.0.0.1", own_redis.port) as proxy,
        gateway_behind(proxy, emitter) as gateway,
        tabs(gateway, app.app_id, users, TABS) as browsers,
    ):
        appended = feed(inprocess_runtime, emitter, app.app_id, users, 10)
        items = appended()
        wait_until(lambda: all(len(b.ids()) == 5 for b in browsers), TIMEOUT, "the first ten live")
        # Ten more reach the stream but not the gateway, and then Redis loses them.
        proxy.hang()
        items += appended()
        own_redis.stop()
        own_redis.start()
        proxy.resume()
        items += appended()
        assert_each_tab_got_its_users_items_once_in_order(browsers, users, TABS, items)


def test_a_tab_whose_gateway_was_killed_resumes_on_another_from_the_last_position_it_saw(
    inprocess_settings: Settings, inprocess_runtime: Runtime, app: NewApp
) -> None:
    """Two gateways on one Redis each hold a tab of the same user. The first is SIGKILLed; its
    tab reconnects to the second with the position of the last notification it saw and gets
    exactly what it missed, in order, then the rest live, as the tab that stayed gets all."""
    user = new_user()
    appended = feed(inprocess_runtime, inprocess_settings, app.app_id, [user], 5)
    with (
        running_gateway(inprocess_settings) as doomed,
        running_gateway(inprocess_settings) as survivor,
        tabs(survivor, app.app_id, [user], 1) as [stayed],
        tabs(doomed, app.app_id, [user], 1) as [moved],
    ):
        items = appended()
        wait_until(lambda: len(moved.ids()) == 5, TIMEOUT, "the first five on the doomed one")
        doomed.service.kill()
        missed = appended()
        last_seen = moved.notifications()[-1]["position"]
        assert last_seen, "a live notification carries its position in the feed"
        moved.close()
        resumed = Browser(survivor.url).connect(
            token_for(survivor.settings, app.app_id, user), auth_extra={"since": last_seen}
        )
        try:
            resumed.wait(lambda b: b.counts(), "the unread count after the replay")
            later = appended()
            expected = [item.delivery_id for item in missed + later]
            wait_until(lambda: len(resumed.ids()) >= 10, TIMEOUT, "the missed five and five more")
            assert resumed.ids() == expected, "missed, doubled or out of order after the move"
            assert_each_tab_got_its_users_items_once_in_order(
                [stayed], [user], 1, items + missed + later
            )
        finally:
            resumed.close()


def test_a_tab_that_missed_more_than_a_page_gets_all_of_it_in_pages_in_order(
    inprocess_settings: Settings, inprocess_runtime: Runtime, app: NewApp
) -> None:
    user = new_user()
    with running_gateway(inprocess_settings) as gateway:
        [seen] = notify_each(inprocess_runtime, inprocess_settings, app.app_id, [user])
        with inprocess_runtime.sessions() as session:
            delivery = session.get(Delivery, seen)
            assert delivery is not None and delivery.receipt is not None
            last_seen = delivery.receipt
        missed = notify_each(
            inprocess_runtime, inprocess_settings, app.app_id, [user] * (2 * REPLAY_LIMIT + 200)
        )
        resumed = Browser(gateway.url).connect(
            token_for(gateway.settings, app.app_id, user), auth_extra={"since": last_seen}
        )
        try:
            resumed.wait(lambda b: b.counts(), "the unread count after the whole replay")
            assert resumed.ids() == missed, "missed, doubled or out of order"
            assert resumed.counts() == [len(missed) + 1]
            assert resumed.disconnects == []
        finally:
            resumed.close()


def test_a_position_that_is_not_one_is_refused_on_connect(
    inprocess_settings: Settings, app: NewApp
) -> None:
    with running_gateway(inprocess_settings) as gateway:
        browser = Browser(gateway.url)
        with pytest.raises(socketio.exceptions.ConnectionError):
            browser.connect(
                token_for(gateway.settings, app.app_id, new_user()), auth_extra={"since": "last"}
            )
        assert browser.connect_errors and "invalid since" in str(browser.connect_errors[-1])


def test_the_web_channel_sends_a_batch_in_one_round_trip_even_after_redis_lost_its_script(
    own_redis: OwnRedis, inprocess_settings: Settings
) -> None:
    """The emit script is loaded once, not checked before every batch (a round trip of its
    own); a Redis restarted empty (here: its scripts flushed) answers NOSCRIPT, and the channel
    loads it again: each notification is appended once, a redelivered one not again."""
    settings = inprocess_settings.with_overrides(redis_url=own_redis.url)
    channel = WebChannel(context_for(settings, "web"))
    client = redis.Redis.from_url(own_redis.url)
    first, second = delivery_for("web"), delivery_for("web")
    for batch in ([first], [delivery_for("web")], [delivery_for("web")]):
        assert channel.send_many(batch)[0].outcome is Outcome.SENT
    assert _script_calls(client) == {"load": 1}
    client.script_flush()
    results = channel.send_many([first, second])
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert results[0].detail == "already emitted" and results[1].detail is None
    assert _script_calls(client) == {"load": 2, "flush": 1}
    entries: Any = client.xrange(feed_key(settings.queue_prefix))
    appended = [fields[b"id"].decode() for _position, fields in entries]
    assert appended.count(first.delivery_id) == 1 and appended[-1] == second.delivery_id


def _script_calls(client: redis.Redis) -> dict[str, int]:
    """How many times each SCRIPT subcommand was called on this Redis."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_script|"): int(stat["calls"])
        for name, stat in stats.items()
        if name.startswith("cmdstat_script|")
    }
