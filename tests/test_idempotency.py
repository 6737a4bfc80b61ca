"""Idempotency-Key: a retried POST answers as the first one did and creates nothing more."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from producer_api.api_keys import NewApp
from producer_api.app import create_app
from shared.ids import utcnow
from shared.models import IdempotencyKey, Message
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import bearer, new_tenant
from tests.stack import Stack
from tests.test_api import assert_problem

BODY = {"to": [{"user_id": "alice"}], "channels": ["web"], "content": {"title": "Hi"}}


def keyed(tenant: NewApp, key: str) -> dict[str, str]:
    return {**bearer(tenant), "Idempotency-Key": key}


def messages_of(runtime: Runtime, tenant: NewApp) -> int:
    with runtime.engine.connect() as connection:
        count = connection.scalar(
            select(func.count()).select_from(Message).where(Message.app_id == tenant.app_id)
        )
    return int(count or 0)


def test_a_retry_with_the_same_key_gets_the_first_answer_and_no_second_message(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    first = client.post("/v1/messages", json=BODY, headers=keyed(tenant, "order-1"))
    # The same body in another key order and spacing is the same request.
    reordered = {"content": {"title": "Hi"}, "channels": ["web"], "to": [{"user_id": "alice"}]}
    again = client.post("/v1/messages", json=reordered, headers=keyed(tenant, "order-1"))
    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert messages_of(runtime, tenant) == 1


def test_the_same_key_with_another_body_is_422(client: FlaskClient, tenant: NewApp) -> None:
    client.post("/v1/messages", json=BODY, headers=keyed(tenant, "k2"))
    other = {**BODY, "content": {"title": "Something else"}}
    problem = assert_problem(
        client.post("/v1/messages", json=other, headers=keyed(tenant, "k2")), 422
    )
    assert "Idempotency-Key" in problem["errors"]
    # Another endpoint with the same key is another request too.
    batch = client.post(
        "/v1/messages/batch", json={"messages": [BODY]}, headers=keyed(tenant, "k2")
    )
    assert_problem(batch, 422)


def test_a_key_still_in_flight_is_409(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    # What a first request with this key holds while it runs.
    lock = f"{runtime.settings.queue_prefix}:idempotency:{tenant.app_id}:slow"
    runtime.redis.set(lock, "first-request", ex=30)
    try:
        response = client.post("/v1/messages", json=BODY, headers=keyed(tenant, "slow"))
        problem = assert_problem(response, 409)
        assert response.headers["Retry-After"] == "1"
        assert "in flight" in problem["detail"]
    finally:
        runtime.redis.delete(lock)
    assert client.post("/v1/messages", json=BODY, headers=keyed(tenant, "slow")).status_code == 202


def test_concurrent_retries_create_one_message(
    stack: Stack, tenant: NewApp, runtime: Runtime
) -> None:
    def attempt(_n: int) -> httpx.Response:
        return httpx.post(
            f"{stack.api_url}/v1/messages", json=BODY, headers=keyed(tenant, "race"), timeout=10
        )

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(attempt, range(16)))
    statuses = {r.status_code for r in responses}
    assert statuses <= {202, 409}, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses if r.status_code == 202}) == 1
    assert messages_of(runtime, tenant) == 1


def test_keys_belong_to_one_app(client: FlaskClient, tenant: NewApp, runtime: Runtime) -> None:
    other = new_tenant(runtime)
    mine = client.post("/v1/messages", json=BODY, headers=keyed(tenant, "shared-key"))
    theirs = client.post("/v1/messages", json=BODY, headers=keyed(other, "shared-key"))
    assert theirs.status_code == 202 and "Idempotent-Replayed" not in theirs.headers
    assert theirs.get_json()["id"] != mine.get_json()["id"]


def test_a_key_is_kept_a_day_and_free_again_after(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    first = client.post("/v1/messages", json=BODY, headers=keyed(tenant, "daily"))
    with runtime.engine.begin() as connection:
        connection.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.app_id == tenant.app_id)
            .values(created_at=utcnow() - timedelta(hours=23))
        )
    assert (
        client.post("/v1/messages", json=BODY, headers=keyed(tenant, "daily")).headers.get(
            "Idempotent-Replayed"
        )
        == "true"
    )
    with runtime.engine.begin() as connection:
        connection.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.app_id == tenant.app_id)
            .values(created_at=utcnow() - timedelta(hours=25))
        )
    later = client.post("/v1/messages", json=BODY, headers=keyed(tenant, "daily"))
    assert later.status_code == 202 and "Idempotent-Replayed" not in later.headers
    assert later.get_json()["id"] != first.get_json()["id"]


def test_a_rejected_request_does_not_use_up_its_key(client: FlaskClient, tenant: NewApp) -> None:
    bad = {**BODY, "channels": ["carrier-pigeon"]}
    assert_problem(client.post("/v1/messages", json=bad, headers=keyed(tenant, "fix-me")), 422)
    fixed = client.post("/v1/messages", json=BODY, headers=keyed(tenant, "fix-me"))
    assert fixed.status_code == 202 and "Idempotent-Replayed" not in fixed.headers


def test_a_batch_is_replayed_whole(client: FlaskClient, tenant: NewApp, runtime: Runtime) -> None:
    batch: dict[str, Any] = {"messages": [BODY, BODY]}
    first = client.post("/v1/messages/batch", json=batch, headers=keyed(tenant, "b1"))
    again = client.post("/v1/messages/batch", json=batch, headers=keyed(tenant, "b1"))
    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json()
    assert messages_of(runtime, tenant) == 2


def test_a_malformed_key_is_400(client: FlaskClient, tenant: NewApp) -> None:
    for key in ("x" * 256, "has space"):
        problem = assert_problem(
            client.post("/v1/messages", json=BODY, headers=keyed(tenant, key)), 400
        )
        assert "Idempotency-Key" in problem["errors"]


def test_without_redis_the_store_still_replays(settings: Settings, runtime: Runtime) -> None:
    no_redis = settings.with_overrides(redis_url="redis://127.0.0.1:1/0")
    app = create_app(no_redis, runtime=Runtime.build(no_redis))
    tenant = new_tenant(runtime)
    with app.test_client() as client:
        first = client.post("/v1/messages", json=BODY, headers=keyed(tenant, "no-redis"))
        again = client.post("/v1/messages", json=BODY, headers=keyed(tenant, "no-redis"))
    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert messages_of(runtime, tenant) == 1
