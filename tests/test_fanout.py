"""Per-app fan-out limits: recipients per request and per minute, subscribers per topic."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import func, select

from producer_api.api_keys import NewApp
from producer_api.app import create_app
from producer_api.fanout import set_fanout_limits
from shared.models import App, Message, Subscription
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import REDIS_URL, bearer, new_tenant, service_env
from tests.offline_dns import offline_resolver
from tests.stack import run_omnipush
from tests.test_api import assert_problem

T = TypeVar("T")


def limited(
    runtime: Runtime,
    per_request: int | None = None,
    per_minute: int | None = None,
    topic_subscribers: int | None = None,
) -> NewApp:
    tenant = new_tenant(runtime)
    with runtime.sessions() as session, session.begin():
        set_fanout_limits(session, tenant.app_id, per_request, per_minute, topic_subscribers)
    return tenant


def to_users(count: int, prefix: str = "u") -> dict[str, Any]:
    return {
        "to": [{"user_id": f"{prefix}{n}"} for n in range(count)],
        "channels": ["web"],
        "content": {"title": "Hi"},
    }


def messages_of(runtime: Runtime, tenant: NewApp) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).where(Message.app_id == tenant.app_id)) or 0)


def subscribe(client: FlaskClient, tenant: NewApp, topic: str, users: list[str]) -> Any:
    return client.post(
        f"/v1/topics/{topic}/subscribers", json={"user_ids": users}, headers=bearer(tenant)
    )


def topic_of(client: FlaskClient, tenant: NewApp, key: str, subscribers: int) -> None:
    assert client.put(f"/v1/topics/{key}", json={}, headers=bearer(tenant)).status_code == 201
    if subscribers:
        added = subscribe(client, tenant, key, [f"s{n}" for n in range(subscribers)])
        assert added.status_code == 200, added.get_json()


def test_a_message_over_the_apps_recipients_per_request_is_a_422_naming_the_limit(
    client: FlaskClient, runtime: Runtime
) -> None:
    tenant = limited(runtime, per_request=5)
    assert client.post("/v1/messages", json=to_users(5), headers=bearer(tenant)).status_code == 202
    refused = client.post("/v1/messages", json=to_users(6), headers=bearer(tenant))
    body = assert_problem(refused, 422)
    assert "limit of 5 recipients per request" in body["detail"]
    assert list(body["errors"]) == ["to"]
    assert messages_of(runtime, tenant) == 1


def test_a_topic_counts_as_its_subscribers(client: FlaskClient, runtime: Runtime) -> None:
    tenant = limited(runtime, per_request=5)
    topic_of(client, tenant, "news", subscribers=4)
    fits = {**to_users(1), "to": [{"topic": "news"}, {"user_id": "x"}]}
    assert client.post("/v1/messages", json=fits, headers=bearer(tenant)).status_code == 202
    over = {**fits, "to": [{"topic": "news"}, {"user_id": "x"}, {"user_id": "y"}]}
    body = assert_problem(client.post("/v1/messages", json=over, headers=bearer(tenant)), 422)
    assert "6 recipients" in body["detail"]


def test_a_batch_is_limited_by_all_its_messages_together(
    client: FlaskClient, runtime: Runtime
) -> None:
    tenant = limited(runtime, per_request=5)
    batch = {"messages": [to_users(2, "a"), to_users(2, "b"), to_users(2, "c")]}
    refused = client.post("/v1/messages/batch", json=batch, headers=bearer(tenant))
    assert list(assert_problem(refused, 422)["errors"]) == ["messages"]
    assert messages_of(runtime, tenant) == 0


def test_the_defaults_come_from_the_settings(settings: Settings, runtime: Runtime) -> None:
    strict = settings.with_overrides(max_recipients_per_request=2)
    app = create_app(
        strict, runtime=dataclasses.replace(runtime, settings=strict), resolver=offline_resolver()
    )
    tenant = new_tenant(runtime)
    with app.test_client() as client:
        refused = client.post("/v1/messages", json=to_users(3), headers=bearer(tenant))
    assert "limit of 2 recipients per request" in assert_problem(refused, 422)["detail"]


def redis_minute() -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        seconds, _micro = client.time()
    finally:
        client.close()
    return int(seconds) // 60


def in_one_redis_minute(attempt: Callable[[], T]) -> T:
    """`attempt()`'s result from a run that began and ended in the same minute of Redis's clock
    (the per-minute counter starts again at each minute)."""
    for _ in range(3):
        started = redis_minute()
        result = attempt()
        if redis_minute() == started:
            return result
    raise AssertionError("three attempts each crossed a minute")


def test_recipients_per_minute_are_counted_across_requests_then_429(
    client: FlaskClient, runtime: Runtime
) -> None:
    def attempt() -> list[Any]:
        tenant = limited(runtime, per_minute=10)
        topic_of(client, tenant, "team", subscribers=3)
        plain = to_users(4)  # accepted by the fast path
        topical = {**plain, "to": [{"topic": "team"}]}  # by the Flask view
        return [
            client.post("/v1/messages", json=body, headers=bearer(tenant))
            for body in (plain, topical, topical, plain)
        ]

    first, second, third, fourth = in_one_redis_minute(attempt)
    assert [first.status_code, second.status_code, third.status_code] == [202, 202, 202]
    body = assert_problem(fourth, 429)
    assert "limit of 10 recipients per minute" in body["detail"]
    assert 1 <= int(fourth.headers["Retry-After"]) <= 60


def test_a_request_larger_than_a_whole_minute_is_a_422_not_a_429(
    client: FlaskClient, runtime: Runtime
) -> None:
    tenant = limited(runtime, per_minute=3)
    refused = client.post("/v1/messages", json=to_users(4), headers=bearer(tenant))
    assert "limit of 3 recipients per minute" in assert_problem(refused, 422)["detail"]


def test_without_redis_the_per_minute_limit_lets_messages_through(
    settings: Settings, runtime: Runtime
) -> None:
    no_redis = settings.with_overrides(redis_url="redis://127.0.0.1:1/0")
    app = create_app(no_redis, runtime=Runtime.build(no_redis), resolver=offline_resolver())
    tenant = limited(runtime, per_minute=2)
    with app.test_client() as client:
        for _ in range(3):
            sent = client.post("/v1/messages", json=to_users(2), headers=bearer(tenant))
            assert sent.status_code == 202, sent.get_json()


def test_a_topic_takes_no_more_subscribers_than_its_apps_limit(
    client: FlaskClient, runtime: Runtime
) -> None:
    tenant = limited(runtime, topic_subscribers=3)
    topic_of(client, tenant, "club", subscribers=2)
    assert subscribe(client, tenant, "club", ["s1", "z"]).get_json() == {"subscribed": 1}
    refused = subscribe(client, tenant, "club", ["late", "later"])
    body = assert_problem(refused, 422)
    assert "limit of 3 subscribers per topic" in body["detail"]
    assert list(body["errors"]) == ["user_ids"]
    with runtime.sessions() as session:
        count = session.scalar(
            select(func.count()).where(
                Subscription.app_id == tenant.app_id, Subscription.topic_key == "club"
            )
        )
    assert count == 3
    assert subscribe(client, tenant, "club", ["s0", "z"]).status_code == 200  # already there


def test_the_cli_sets_an_apps_fanout_limits(
    settings: Settings, runtime: Runtime, client: FlaskClient
) -> None:
    tenant = new_tenant(runtime)
    changed = run_omnipush(
        "apps",
        "limit",
        tenant.app_id,
        "--recipients-per-request",
        "3",
        "--recipients-per-minute",
        "100",
        "--topic-subscribers",
        "50",
        env=service_env(settings),
    )
    assert changed.returncode == 0, changed.stderr
    shown = json.loads(changed.stdout)
    assert (shown["recipients_per_request"], shown["topic_subscribers"]) == (3, 50)
    with runtime.sessions() as session:
        app = session.get(App, tenant.app_id)
        assert app is not None
        assert (app.max_recipients_per_request, app.max_recipients_per_minute) == (3, 100)
    refused = client.post("/v1/messages", json=to_users(4), headers=bearer(tenant))
    assert "limit of 3 recipients per request" in assert_problem(refused, 422)["detail"]


@pytest.mark.parametrize(
    "option", ["--recipients-per-request", "--recipients-per-minute", "--topic-subscribers"]
)
def test_a_fanout_limit_below_one_is_a_clear_cli_error(settings: Settings, option: str) -> None:
    result = run_omnipush("apps", "limit", "app_x", option, "0", env=service_env(settings))
    assert result.returncode != 0
    assert f"Invalid value for '{option}'" in result.stderr
    assert "Traceback" not in result.stderr
