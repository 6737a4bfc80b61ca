"""Per-API-key rate limits: a token bucket in Redis, 429 with Retry-After, set per app."""

from __future__ import annotations

import json
import math
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from flask.testing import FlaskClient

from producer_api.api_keys import NewApp, create_app_with_key
from producer_api.app import create_app
from producer_api.rate_limit import Limit, RateLimiter
from shared.runtime import Runtime
from shared.settings import Settings
from tests.api_process import api_process
from tests.conftest import bearer, new_tenant, service_env
from tests.fault_proxy import FaultProxy
from tests.stack import run_omnipush, wait_until
from tests.test_api import assert_problem

BODY = {"to": [{"user_id": "alice"}], "channels": ["web"], "content": {"title": "Hi"}}


def limited_tenant(runtime: Runtime, rate: float, burst: int) -> NewApp:
    with runtime.sessions() as session, session.begin():
        return create_app_with_key(session, "limited", rate_limit=rate, rate_burst=burst)


def test_a_key_over_its_limit_gets_429_with_retry_after(
    client: FlaskClient, runtime: Runtime
) -> None:
    tenant = limited_tenant(runtime, rate=0.1, burst=3)
    statuses = [
        client.post("/v1/messages", json=BODY, headers=bearer(tenant)).status_code for _ in range(3)
    ]
    assert statuses == [202, 202, 202]
    refused = client.get("/v1/messages", headers=bearer(tenant))
    problem = assert_problem(refused, 429)
    assert 1 <= int(refused.headers["Retry-After"]) <= 10
    assert "0.1 requests per second" in problem["detail"]
    # Other apps have buckets of their own.
    other = new_tenant(runtime)
    assert client.post("/v1/messages", json=BODY, headers=bearer(other)).status_code == 202


def test_the_bucket_refills_at_its_rate(runtime: Runtime) -> None:
    limiter = RateLimiter(runtime.best_effort_redis, runtime.settings.queue_prefix)
    fast, slow = new_tenant(runtime).app_id, new_tenant(runtime).app_id
    # One token every 2 s: the second request is told to come back in 2 s.
    assert [limiter.retry_after(slow, Limit(rate=0.5, burst=1)) for _ in range(2)] == [None, 2]
    # One token a millisecond: a refused request soon finds its token.
    limit = Limit(rate=1000.0, burst=1)
    assert limiter.retry_after(fast, limit) is None
    wait_until(lambda: limiter.retry_after(fast, limit) is None, 10, "the bucket to refill")


def test_processes_leasing_tokens_never_exceed_the_bucket(runtime: Runtime) -> None:
    app_id = new_tenant(runtime).app_id
    limit = Limit(rate=1.0, burst=100)  # a lease of 1 a second's worth at most: 1
    generous = Limit(rate=200.0, burst=100)  # leases of 5
    assert (limit.lease, generous.lease) == (1, 5)
    processes = [
        RateLimiter(runtime.best_effort_redis, runtime.settings.queue_prefix) for _ in range(3)
    ]
    started = time.monotonic()
    allowed = sum(processes[n % 3].retry_after(app_id, generous) is None for n in range(400))
    refilled = math.ceil((time.monotonic() - started) * generous.rate)
    # Never more than the bucket held plus what it refilled; at most the unspent leases less.
    assert 100 - 3 * generous.lease <= allowed <= 100 + refilled


def test_the_default_limit_comes_from_the_settings(settings: Settings, runtime: Runtime) -> None:
    strict = settings.with_overrides(api_rate_limit=0.01, api_rate_burst=1)
    app = create_app(strict, runtime=Runtime.build(strict))
    tenant = new_tenant(runtime)
    with app.test_client() as client:
        assert client.get("/v1/messages", headers=bearer(tenant)).status_code == 200
        assert_problem(client.get("/v1/messages", headers=bearer(tenant)), 429)


def test_without_redis_requests_are_not_refused(settings: Settings, runtime: Runtime) -> None:
    no_redis = settings.with_overrides(redis_url="redis://127.0.0.1:1/0")
    app = create_app(no_redis, runtime=Runtime.build(no_redis))
    tenant = limited_tenant(runtime, rate=0.01, burst=1)
    with app.test_client() as client:
        for _ in range(3):
            assert client.post("/v1/messages", json=BODY, headers=bearer(tenant)).status_code == 202


def test_a_hung_redis_holds_up_no_request_and_limits_return_when_it_answers(
    settings: Settings, runtime: Runtime
) -> None:
    tenant = limited_tenant(runtime, rate=0.01, burst=1)
    with (
        FaultProxy("127.0.0.1", 6379) as proxy,
        api_process(settings, OMNIPUSH_REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0") as api,
    ):
        # A first request, so that the process has connected to Redis before it hangs.
        warm = httpx.post(f"{api.url}/v1/messages", json=BODY, headers=bearer(new_tenant(runtime)))
        assert warm.status_code == 202, warm.text
        proxy.hang()

        def send(n: int) -> int:
            # Every other one with an Idempotency-Key: its in-flight lock is in Redis too.
            headers = bearer(tenant) | ({"Idempotency-Key": f"hung-{n}"} if n % 2 else {})
            response = httpx.post(f"{api.url}/v1/messages", json=BODY, headers=headers, timeout=30)
            return response.status_code

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(send, range(8)))
        took = time.monotonic() - started
        # Fail-open: no limit applies, and no request waits for Redis's timeouts (the client
        # the API used before waited 5 s per try, one request at a time).
        assert statuses == [202] * 8
        assert took < 3, f"8 requests took {took:.1f} s with Redis hung"
        assert "redis.skipped" in api.service.output()

        proxy.resume()

        def limited() -> bool:
            return send(0) == 429

        wait_until(limited, 30, "the rate limit to apply again once Redis answers")


def test_apps_get_their_own_limits_from_the_cli(settings: Settings) -> None:
    env = service_env(settings)
    created = run_omnipush("apps", "create", "bulk", "--rate-limit", "2000", env=env)
    assert created.returncode == 0, created.stderr
    app_id = json.loads(created.stdout)["app_id"]
    changed = run_omnipush("apps", "limit", app_id, "--rate-limit", "5", "--burst", "10", env=env)
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout) == {
        "app_id": app_id,
        "rate_limit": 5.0,
        "burst": 10,
        "recipients_per_request": None,
        "recipients_per_minute": None,
        "topic_subscribers": None,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["apps", "create", "x", "--rate-limit", "0"], "Invalid value for '--rate-limit'"),
        (["apps", "create", "x", "--burst", "0"], "Invalid value for '--burst'"),
        (["apps", "limit", "app_nope", "--rate-limit", "1"], "no app app_nope"),
    ],
)
def test_bad_limits_are_clear_cli_errors(settings: Settings, args: list[str], message: str) -> None:
    result = run_omnipush(*args, env=service_env(settings))
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_bad_default_limit_in_the_environment_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="OMNIPUSH_API_RATE_LIMIT must be a positive float"):
        Settings.from_env(
            {"OMNIPUSH_API_RATE_LIMIT": "lots", "OMNIPUSH_SECRET_KEY": secrets.token_urlsafe(32)}
        )
