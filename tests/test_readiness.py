"""A dependency that accepts connections and never answers is named, within seconds, by `/readyz`
(503) and by `make run`'s preparation (one line and exit 1), never a traceback."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from producer_api.app import create_app
from shared.runtime import Runtime
from shared.settings import Settings
from tests.fault_proxy import FaultProxy
from tests.stack import run_omnipush
from tests.test_api import assert_problem

#: Well over the checks' 2 s, well under what they took before (15 s and more, or for ever).
ANSWERED_WITHIN_SECONDS = 10


def through(proxy: FaultProxy, settings: Settings, dependency: str) -> dict[str, str]:
    """The settings fields that send `dependency`'s connections through `proxy`."""
    if dependency == "broker":
        return {"amqp_url": f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"}
    if dependency == "redis":
        return {"redis_url": f"redis://127.0.0.1:{proxy.port}/0"}
    url = make_url(settings.database_url).set(port=proxy.port)
    return {"database_url": url.render_as_string(hide_password=False)}


PORTS = {"store": 5432, "broker": 5672, "redis": 6379}


@pytest.fixture(params=list(PORTS))
def hung(request: pytest.FixtureRequest) -> Iterator[tuple[str, FaultProxy]]:
    """A dependency behind a proxy that accepts connections and never answers."""
    with FaultProxy("127.0.0.1", PORTS[request.param]) as proxy:
        proxy.hang()
        yield request.param, proxy


def ask_readyz(settings: Settings) -> tuple[Any, float]:
    """GET /readyz of an API on `settings`, and how long it took; a request that never ends
    is left behind (its thread is a daemon) and fails the test."""
    app = create_app(settings, runtime=Runtime.build(settings))
    answers: list[Any] = []
    started = time.monotonic()
    asking = threading.Thread(
        target=lambda: answers.append(app.test_client().get("/readyz")), daemon=True
    )
    asking.start()
    asking.join(60)
    assert answers, "/readyz did not answer within 60 s"
    return answers[0], time.monotonic() - started


def test_readyz_names_a_hung_dependency_within_seconds(
    settings: Settings, hung: tuple[str, FaultProxy]
) -> None:
    dependency, proxy = hung
    response, took = ask_readyz(settings.with_overrides(**through(proxy, settings, dependency)))
    problem = assert_problem(response, 503)
    assert (
        problem["checks"][dependency]
        == f"unreachable at 127.0.0.1:{proxy.port}: no answer within 2 s"
    )
    assert {name for name, state in problem["checks"].items() if state != "ok"} == {dependency}
    assert dependency in problem["detail"]
    assert took < ANSWERED_WITHIN_SECONDS, f"/readyz took {took:.1f} s"


HOW_TO_START = {
    "store": "the store: check OMNIPUSH_DATABASE_URL",
    "broker": "RabbitMQ: start it with `rabbitmq-server -detached`",
    "redis": "Redis: start it with `redis-server --daemonize yes`",
}
ENVIRONMENT = {
    "store": "OMNIPUSH_DATABASE_URL",
    "broker": "OMNIPUSH_AMQP_URL",
    "redis": "OMNIPUSH_REDIS_URL",
}


def test_make_run_names_a_hung_dependency_in_one_line_and_exits_1(
    settings: Settings, hung: tuple[str, FaultProxy], tmp_path: Path
) -> None:
    dependency, proxy = hung
    (value,) = through(proxy, settings, dependency).values()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIPUSH_")}
    env[ENVIRONMENT[dependency]] = value
    result = run_omnipush("dev", "prepare", env=env, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: cannot reach " + HOW_TO_START[dependency])
    assert lines[0].endswith(f"(unreachable at 127.0.0.1:{proxy.port}: no answer within 2 s)")
    assert not (tmp_path / "var" / "Procfile").exists()
