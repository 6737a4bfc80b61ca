"""What the CLI changes about a key or an app reaches API processes that are already running.

Two `omnipush serve api` processes run on the same store, each with its own memory of keys;
both must see a revoked key and a new limit within the time the README promises (5 s).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import httpx
import pytest

from shared.settings import Settings
from tests.conftest import queue_prefix, service_env
from tests.stack import Service, free_port, run_omnipush, wait_http_ok, wait_until

#: What the README promises for `apps key-revoke` and `apps limit`.
REACHES_RUNNING_APIS_WITHIN = 5.0


@dataclass
class RunningApis:
    env: dict[str, str]
    urls: list[str]

    def omnipush(self, *args: str) -> dict[str, str]:
        result = run_omnipush(*args, env=self.env)
        assert result.returncode == 0, (args, result.stderr)
        shown: dict[str, str] = json.loads(result.stdout)
        return shown


@pytest.fixture(scope="module")
def apis(inprocess_settings: Settings) -> Iterator[RunningApis]:
    # A prefix of its own: the bad keys these tests send from 127.0.0.1 count against no one
    # else's allowance.
    with queue_prefix() as prefix:
        env = service_env(inprocess_settings.with_overrides(queue_prefix=prefix))
        binds = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        services = [
            Service(["serve", "api", "--workers", "1"], {**env, "OMNIPUSH_API_BIND": bind})
            for bind in binds
        ]
        try:
            for service in services:
                service.start()
            for bind in binds:
                wait_http_ok(f"http://{bind}/healthz")
            yield RunningApis(env=env, urls=[f"http://{bind}" for bind in binds])
        finally:
            for service in services:
                service.stop()


def _status(url: str, key: str) -> int:
    response = httpx.get(f"{url}/v1/users", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    return response.status_code


def _answers(url: str, key: str, status: int) -> bool:
    return _status(url, key) == status


def _until_every_api_answers(apis: RunningApis, key: str, status: int, since: float) -> None:
    """Poll each API until it answers `status` for `key`; fail once the promise is broken.
    Each is asked no more once it has answered so (a refused key counts against the address)."""
    for url in apis.urls:
        left = REACHES_RUNNING_APIS_WITHIN - (time.monotonic() - since)
        wait_until(partial(_answers, url, key, status), max(left, 0), f"{url} to say {status}")


def test_a_revoked_key_is_refused_by_every_running_api_within_5_s(apis: RunningApis) -> None:
    created = apis.omnipush("apps", "create", "rotating")
    old = apis.omnipush("apps", "key-create", created["app_id"])
    for url in apis.urls:  # both processes now remember the key as good
        assert [_status(url, old["api_key"]) for _ in range(3)] == [200] * 3

    apis.omnipush("apps", "key-revoke", old["key_id"])
    revoked = time.monotonic()
    _until_every_api_answers(apis, old["api_key"], 401, since=revoked)

    for url in apis.urls:
        refused = httpx.get(
            f"{url}/v1/users", headers={"Authorization": f"Bearer {old['api_key']}"}
        )
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["detail"] == "The API key is not valid."
        # The app's other key goes on working.
        assert _status(url, created["api_key"]) == 200


def test_a_new_limit_reaches_every_running_api_within_5_s(apis: RunningApis) -> None:
    created = apis.omnipush("apps", "create", "throttled")
    for url in apis.urls:
        assert [_status(url, created["api_key"]) for _ in range(5)] == [200] * 5

    apis.omnipush("apps", "limit", created["app_id"], "--rate-limit", "1", "--burst", "1")
    limited = time.monotonic()
    _until_every_api_answers(apis, created["api_key"], 429, since=limited)
