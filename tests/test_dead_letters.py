"""Dead letters end to end: a delivery that fails for good is listed, replayed (REST and CLI),
and then sent once; listing filters and pages; a replay happens once.

The worker and its scripted channel are those of tests/test_worker.py: the "address" fails
permanently on its first attempt and works on the next.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta

import pika
import pytest
from flask.testing import FlaskClient
from sqlalchemy import insert, select

from channels.base import Outcome
from channels.worker import channel_context
from producer_api.api_keys import NewApp, create_key
from producer_api.app import create_app
from shared.config_file import Delay
from shared.dead_letters import (
    DeadLetterFilter,
    DeadLetterView,
    find_dead_letter,
    list_dead_letters,
    replay,
)
from shared.ids import new_id, utcnow
from shared.models import DeadLetter, Delivery, Event, Message, OutboxEntry
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import (
    AMQP_URL,
    bearer,
    isolated_settings,
    new_tenant,
    queue_depth,
    queue_prefix,
    service_env,
)
from tests.offline_dns import offline_resolver
from tests.queued import queued_delivery, running_relay, running_worker
from tests.stack import free_port, run_omnipush, wait_until
from tests.test_worker import ScriptedChannel, state


def _api(runtime: Runtime) -> FlaskClient:
    app = create_app(runtime.settings, runtime=runtime, resolver=offline_resolver())
    return app.test_client()


def _app_of(runtime: Runtime, message_id: str) -> str:
    with runtime.engine.connect() as connection:
        return str(connection.scalar(select(Message.app_id).where(Message.id == message_id)))


def _stages(runtime: Runtime, delivery_id: str) -> list[str]:
    with runtime.engine.connect() as connection:
        return list(
            connection.scalars(
                select(Event.stage).where(Event.delivery_id == delivery_id).order_by(Event.id)
            )
        )


def _failed(runtime: Runtime, message_id: str, delivery_id: str) -> None:
    wait_until(lambda: state(runtime, message_id, delivery_id)[1] == "failed", 20, "failed")


def _completed(runtime: Runtime, message_id: str, delivery_id: str) -> None:
    wait_until(
        lambda: state(runtime, message_id, delivery_id)[:2] == ("sent", "completed"),
        20,
        "the replayed delivery to be sent",
    )


@pytest.fixture
def own_store() -> Iterator[Runtime]:
    """A store and queues of this test's own: the CLI sees (and `--all` replays) every dead
    letter of its store, so none of other tests may be there."""
    with isolated_settings() as settings:
        built = Runtime.build(settings)
        yield built
        built.close()


def test_a_delivery_that_fails_for_good_is_a_dead_letter_written_with_its_failed_record(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    channel = ScriptedChannel(channel_context(runtime, "web"), [Outcome.PERMANENT])
    with running_worker(runtime, channel):
        message_id, delivery_id = queued_delivery(runtime)
        _failed(runtime, message_id, delivery_id)
    app_id = _app_of(runtime, message_id)
    with runtime.engine.connect() as connection:
        (dead,), more = list_dead_letters(connection, DeadLetterFilter(app_id=app_id))
    assert more is None
    assert (dead.delivery_id, dead.message_id, dead.app_id, dead.channel) == (
        delivery_id,
        message_id,
        app_id,
        "web",
    )
    assert (dead.attempts, dead.reason, dead.replayed_at) == (1, "scripted permanent", None)


def test_a_dead_letter_replayed_over_rest_is_sent_once_and_replays_only_once(
    own_store: Runtime,
) -> None:
    runtime = own_store
    channel = ScriptedChannel(channel_context(runtime, "web"), [Outcome.PERMANENT, Outcome.SENT])
    api = _api(runtime)
    with running_relay(runtime), running_worker(runtime, channel):
        message_id, delivery_id = queued_delivery(runtime)
        _failed(runtime, message_id, delivery_id)
        # queued_delivery's tenant keeps its key to itself: give it another one to call with.
        app_id = _app_of(runtime, message_id)
        with runtime.sessions() as session, session.begin():
            created = create_key(session, app_id)
        assert created is not None
        tenant = NewApp(app_id=app_id, api_key=created.api_key)
        listed = api.get("/v1/dead-letters?channel=web", headers=bearer(tenant))
        assert listed.status_code == 200, listed.get_json()
        (item,) = listed.get_json()["items"]
        assert item["delivery_id"] == delivery_id and item["reason"] == "scripted permanent"

        replayed = api.post(f"/v1/dead-letters/{item['id']}/replay", headers=bearer(tenant))
        assert replayed.status_code == 202, replayed.get_json()
        assert replayed.get_json() == {"id": item["id"], "status": "replayed"}
        _completed(runtime, message_id, delivery_id)

        again = api.post(f"/v1/dead-letters/{item['id']}/replay", headers=bearer(tenant))
        assert again.status_code == 409
        assert again.headers["Content-Type"] == "application/problem+json"
    assert channel.attempts == [delivery_id, delivery_id]
    assert _stages(runtime, delivery_id) == ["failed", "replayed", "sent"]
    with runtime.engine.connect() as connection:
        attempts = connection.scalar(select(Delivery.attempts).where(Delivery.id == delivery_id))
    assert attempts == 1  # reset by the replay, then one attempt
    # Replayed letters leave the list, and stay readable with `replayed=true`.
    assert api.get("/v1/dead-letters", headers=bearer(tenant)).get_json()["items"] == []
    history = api.get("/v1/dead-letters?replayed=true", headers=bearer(tenant)).get_json()["items"]
    assert [h["id"] for h in history] == [item["id"]] and history[0]["replayed_at"]


def test_replaying_an_unknown_or_another_apps_dead_letter_is_404(
    isolated_runtime: Runtime,
) -> None:
    runtime = isolated_runtime
    owner, other = new_tenant(runtime), new_tenant(runtime)
    (dead_id,) = _dead_letters(runtime, owner.app_id, ["web"])
    api = _api(runtime)
    for tenant, dead in ((owner, "dead_nope"), (other, dead_id)):
        answer = api.post(f"/v1/dead-letters/{dead}/replay", headers=bearer(tenant))
        assert answer.status_code == 404, answer.get_json()
        assert answer.headers["Content-Type"] == "application/problem+json"
    assert api.get("/v1/dead-letters", headers=bearer(other)).get_json()["items"] == []


def test_the_cli_lists_and_replays_one_then_all_with_progress(own_store: Runtime) -> None:
    runtime = own_store
    env = service_env(runtime.settings)
    script = [Outcome.PERMANENT, Outcome.PERMANENT, Outcome.SENT, Outcome.SENT]
    channel = ScriptedChannel(channel_context(runtime, "web"), script)
    with running_relay(runtime), running_worker(runtime, channel):
        first = queued_delivery(runtime)
        _failed(runtime, *first)
        second = queued_delivery(runtime)
        _failed(runtime, *second)
        apps = {_app_of(runtime, first[0]), _app_of(runtime, second[0])}

        listed = run_omnipush("dead", "list", "--channel", "web", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [r["delivery_id"] for r in rows] == [first[1], second[1]]
        assert {r["app_id"] for r in rows} == apps
        only = run_omnipush("dead", "list", "--app", _app_of(runtime, first[0]), env=env)
        assert only.returncode == 0 and first[1] in only.stdout and second[1] not in only.stdout

        one = run_omnipush("dead", "replay", rows[0]["id"], env=env)
        assert one.returncode == 0, one.stderr
        assert one.stdout.strip() == f"replayed {rows[0]['id']}"
        _completed(runtime, *first)

        rest = run_omnipush("dead", "replay", "--all", "--channel", "web", env=env)
        assert rest.returncode == 0, rest.stderr
        assert "replayed 1/1" in rest.stderr and rest.stdout.strip() == "replayed 1 dead letters"
        _completed(runtime, *second)

        twice = run_omnipush("dead", "replay", rows[0]["id"], env=env)
        assert twice.returncode == 1 and "replayed already" in twice.stderr
        none_left = run_omnipush("dead", "replay", "--all", env=env)
        assert none_left.returncode == 0 and "none waiting" in none_left.stdout
    assert sorted(channel.attempts) == sorted([first[1], first[1], second[1], second[1]])
    unknown = run_omnipush("dead", "replay", "dead_nope", env=env)
    assert unknown.returncode == 1 and "no dead letter dead_nope" in unknown.stderr
    for bad in (("dead", "replay"), ("dead", "replay", "x", "--all")):
        result = run_omnipush(*bad, env=env)
        assert result.returncode == 2 and "Traceback" not in result.stderr, bad


def _dead_letters(
    runtime: Runtime, app_id: str, channels: list[str], priority: str = "normal"
) -> list[str]:
    """Dead letters of `app_id` on `channels` (one each, in order), with their message."""
    now = utcnow()
    message_id = new_id("msg")
    ids = []
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(Message),
            {
                "id": message_id,
                "app_id": app_id,
                "status": "failed",
                "recipients": [{"user_id": "u"}],
                "channels": sorted(set(channels)),
                "content": {"title": "t"},
                "category": "notification",
                "priority": priority,
                "created_at": now,
                "updated_at": now,
            },
        )
        for index, channel in enumerate(channels):
            ids.append(new_id("dead"))
            connection.execute(
                insert(DeadLetter),
                {
                    "id": ids[-1],
                    "delivery_id": new_id("dlv"),
                    "message_id": message_id,
                    "app_id": app_id,
                    "channel": channel,
                    "attempts": 6,
                    "error": f"failure {index}",
                    "created_at": now + timedelta(milliseconds=index),
                },
            )
    return ids


def test_listing_filters_by_app_and_channel_and_pages_in_id_order(
    runtime: Runtime, client: FlaskClient
) -> None:
    tenant, other = new_tenant(runtime), new_tenant(runtime)
    ids = _dead_letters(runtime, tenant.app_id, ["web", "email", "web", "web", "email"])
    _dead_letters(runtime, other.app_id, ["web"])
    web = [
        i for i, c in zip(ids, ["web", "email", "web", "web", "email"], strict=True) if c == "web"
    ]

    seen, cursor = [], None
    while True:
        query = "?channel=web&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/v1/dead-letters{query}", headers=bearer(tenant))
        assert page.status_code == 200, page.get_json()
        seen += [item["id"] for item in page.get_json()["items"]]
        cursor = page.get_json()["next_cursor"]
        if cursor is None:
            break
    assert seen == web
    everything = client.get("/v1/dead-letters", headers=bearer(tenant)).get_json()
    assert [i["id"] for i in everything["items"]] == ids and everything["next_cursor"] is None
    assert "app_id" not in everything["items"][0]
    bad = client.get("/v1/dead-letters?limit=0&colour=red", headers=bearer(tenant))
    assert bad.status_code == 422 and bad.headers["Content-Type"] == "application/problem+json"
    with runtime.engine.connect() as connection:
        mine, _ = list_dead_letters(
            connection, DeadLetterFilter(channel="email", app_id=tenant.app_id)
        )
        others, _ = list_dead_letters(connection, DeadLetterFilter(app_id=other.app_id))
    assert [d.id for d in mine] == [ids[1], ids[4]] and [d.reason for d in mine] == [
        "failure 1",
        "failure 4",
    ]
    assert len(others) == 1


def _failed_dead_letter(
    runtime: Runtime, app_id: str, channel: str, priority: str = "normal"
) -> DeadLetterView:
    """A dead letter of `app_id` on `channel` whose delivery is `failed` in the store."""
    (dead_id,) = _dead_letters(runtime, app_id, [channel], priority)
    with runtime.engine.begin() as connection:
        dead = find_dead_letter(connection, dead_id)
        assert dead is not None
        now = utcnow()
        connection.execute(
            insert(Delivery),
            {
                "id": dead.delivery_id,
                "message_id": dead.message_id,
                "app_id": app_id,
                "recipient": "user:u",
                "user_id": "u",
                "channel": channel,
                "status": "failed",
                "attempts": 6,
                "created_at": now,
                "updated_at": now,
            },
        )
    return dead


def _outbox_keys(runtime: Runtime, message_id: str) -> list[str]:
    with runtime.engine.connect() as connection:
        return list(
            connection.scalars(
                select(OutboxEntry.routing_key).where(OutboxEntry.message_id == message_id)
            )
        )


def test_a_replay_needs_only_the_store_and_goes_out_through_the_relay_in_its_lane(
    own_store: Runtime,
) -> None:
    runtime = own_store
    dead = _failed_dead_letter(runtime, new_tenant(runtime).app_id, "web", priority="high")
    # Nothing listens on the broker's address: the replay does not need it.
    env = {**service_env(runtime.settings), "OMNIPUSH_AMQP_URL": f"amqp://127.0.0.1:{free_port()}"}
    done = run_omnipush("dead", "replay", dead.id, env=env)
    assert done.returncode == 0, done.stderr
    # Written to the outbox in the replay's transaction, not published by the replay itself:
    # so no worker can take the message before the store says the delivery is queued again.
    assert _outbox_keys(runtime, dead.message_id) == ["channel.web.high"]
    high, normal, low = runtime.topology.channel_queues("web")
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        runtime.topology.declare_blocking(connection.channel())
        with running_relay(runtime):
            wait_until(lambda: queue_depth(high) == 1, 20, "the relay to publish the replay")
        assert [queue_depth(queue) for queue in (normal, low)] == [0, 0]
        _method, _properties, body = connection.channel().basic_get(high, auto_ack=True)
    finally:
        connection.close()
    sent = json.loads(body)
    assert (sent["delivery_id"], sent["priority"]) == (dead.delivery_id, "high")


def test_two_replays_at_once_requeue_the_delivery_once(isolated_runtime: Runtime) -> None:
    runtime = isolated_runtime
    dead = _failed_dead_letter(runtime, new_tenant(runtime).app_id, "web")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: replay(runtime.engine, [dead.id]), range(2)))
    assert sorted(results) == [[], [dead.id]]
    assert _outbox_keys(runtime, dead.message_id) == ["channel.web"]
    assert _stages(runtime, dead.delivery_id) == ["replayed"]


def test_a_delivery_out_of_attempts_is_a_dead_letter_too(inprocess_settings: Settings) -> None:
    with queue_prefix() as prefix:
        # One short tier: the first attempt, one retry after a second, then dead.
        config = replace(inprocess_settings.config, retry_delays=(Delay("1s", 1.0),))
        runtime = Runtime.build(
            inprocess_settings.with_overrides(queue_prefix=prefix, config=config)
        )
        channel = ScriptedChannel(channel_context(runtime, "web"), [Outcome.TRANSIENT] * 2)
        try:
            with running_worker(runtime, channel):
                message_id, delivery_id = queued_delivery(runtime)
                _failed(runtime, message_id, delivery_id)
        finally:
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            runtime.topology.delete_blocking(connection.channel())
            connection.close()
            runtime.close()
    with runtime.engine.connect() as connection:
        (dead,), _ = list_dead_letters(
            connection, DeadLetterFilter(app_id=_app_of(runtime, message_id))
        )
    assert (dead.delivery_id, dead.attempts, dead.reason) == (delivery_id, 2, "scripted transient")
    assert _stages(runtime, delivery_id) == ["retrying", "failed"]
