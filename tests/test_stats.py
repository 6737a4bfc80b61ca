"""`omnipush stats` on a store and Redis whose state the test sets up, breaker included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import insert

from channels.accounts import AccountGate
from channels.base import Result
from shared.config_file import Account, BreakerConfig
from shared.ids import new_id, utcnow
from shared.models import DeadLetter, Delivery, Event, Message
from shared.runtime import Runtime
from tests.conftest import isolated_settings, new_tenant, service_env
from tests.stack import run_omnipush


@pytest.fixture
def own_store() -> Iterator[Runtime]:
    """A store and queue prefix of this test's own: stats count everything in them."""
    with isolated_settings() as settings:
        built = Runtime.build(settings)
        yield built
        built.close()


def _fill(runtime: Runtime) -> None:
    """On `email`: 2 queued, 1 retrying, 1 sending; in the trace, sent 3 times in the last
    minute and 1 more in the hour (and once two hours ago), failed once in the minute, and
    one retry half an hour ago; 2 dead letters waiting and 1 replayed. On `web`: 1 queued."""
    app_id = new_tenant(runtime).app_id
    now = utcnow()
    message_id = new_id("msg")
    statuses = {
        "email": ["queued", "pending", "retrying", "sending", "sent", "failed"],
        "web": ["queued"],
    }
    deliveries = {
        channel: [(new_id("dlv"), status) for status in found]
        for channel, found in statuses.items()
    }
    email = [delivery_id for delivery_id, _status in deliveries["email"]]
    events = [
        (email[4], "sent", 10),
        (email[4], "sent", 20),
        (email[2], "sent", 50),
        (email[3], "sent", 600),
        (email[3], "sent", 7200),
        (email[5], "failed", 5),
        (email[2], "retrying", 1800),
        (email[0], "dispatched", 5),
    ]
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(Message),
            {
                "id": message_id,
                "app_id": app_id,
                "status": "dispatched",
                "recipients": [{"user_id": "u"}],
                "channels": ["email", "web"],
                "content": {"title": "t"},
                "category": "notification",
                "priority": "normal",
                "created_at": now,
                "updated_at": now,
            },
        )
        connection.execute(
            insert(Delivery),
            [
                {
                    "id": delivery_id,
                    "message_id": message_id,
                    "app_id": app_id,
                    "recipient": f"user:u{index}",
                    "user_id": f"u{index}",
                    "channel": channel,
                    "status": status,
                    "attempts": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for channel, rows in deliveries.items()
                for index, (delivery_id, status) in enumerate(rows)
            ],
        )
        connection.execute(
            insert(Event),
            [
                {
                    "message_id": message_id,
                    "delivery_id": delivery_id,
                    "stage": stage,
                    "at": now - timedelta(seconds=ago),
                    "detail": {},
                }
                for delivery_id, stage, ago in events
            ],
        )
        connection.execute(
            insert(DeadLetter),
            [
                {
                    "id": new_id("dead"),
                    "delivery_id": email[5],
                    "message_id": message_id,
                    "app_id": app_id,
                    "channel": "email",
                    "attempts": 6,
                    "error": "gone",
                    "created_at": now,
                    "replayed_at": replayed,
                }
                for replayed in (None, None, now)
            ],
        )


def _open_breaker(runtime: Runtime) -> None:
    gate = AccountGate(
        runtime.best_effort_redis,
        runtime.settings.queue_prefix,
        "email",
        BreakerConfig(failures=1, open_seconds=120),
    )
    gate.report(Account(name="primary", provider="smtp"), Result.transient("connection refused"))


def test_stats_count_each_channel_and_show_its_open_breakers(own_store: Runtime) -> None:
    runtime = own_store
    _fill(runtime)
    _open_breaker(runtime)
    env = service_env(runtime.settings)

    result = run_omnipush("stats", "--json", env=env)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    email = stats["channels"]["email"]
    (breaker,) = email.pop("open_breakers")
    assert breaker["account"] == "primary" and 100 < breaker["seconds_left"] <= 120
    assert email == {
        "queued": 3,
        "in_flight": 1,
        "sent_1m": 3,
        "sent_1h": 4,
        "failed_1m": 1,
        "failed_1h": 1,
        "retrying_1m": 0,
        "retrying_1h": 1,
        "dead_letters": 2,
    }
    assert stats["channels"]["web"]["queued"] == 1
    assert stats["channels"]["web"]["open_breakers"] == []
    assert stats["breakers_known"] is True

    table = run_omnipush("stats", env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "channel",
        "queued",
        "in_flight",
        "sent_1m",
        "sent_1h",
        "failed_1m",
        "failed_1h",
        "retrying_1m",
        "retrying_1h",
        "dead_letters",
    ]
    assert lines[1].split() == ["email", "3", "1", "3", "4", "1", "1", "0", "1", "2"]
    assert lines[2].split()[:2] == ["web", "1"]
    assert "open breakers:" in lines and lines[-1].strip().startswith("email/primary: ")


def test_stats_without_redis_still_count_and_say_the_breakers_are_unknown(
    own_store: Runtime,
) -> None:
    runtime = own_store
    _fill(runtime)
    env = {**service_env(runtime.settings), "OMNIPUSH_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = run_omnipush("stats", env=env)
    assert result.returncode == 0, result.stderr
    assert "open breakers are unknown" in result.stderr
    assert result.stdout.splitlines()[1].split()[:2] == ["email", "3"]
    assert "open breakers: unknown (Redis did not answer)" in result.stdout
