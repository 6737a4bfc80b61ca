"""How the services behave at their edges: a missing broker at start, a graceful stop."""

from __future__ import annotations

import json
import signal
import socket

import pytest

from shared.settings import Settings
from tests.conftest import service_env
from tests.stack import Service, free_port, wait_http_ok


def test_a_service_started_without_rabbitmq_says_so_once_and_keeps_retrying(
    settings: Settings,
) -> None:
    # Something listens where RabbitMQ should be but never speaks AMQP: each attempt of the
    # dispatcher to connect is a connection this test accepts and drops.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(10)
        port = listener.getsockname()[1]
        env = service_env(settings) | {
            "OMNIPUSH_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{port}/%2F"
        }
        dispatcher = Service(args=["serve", "dispatcher"], env=env).start()
        try:
            for _attempt in range(3):
                accepted, _address = listener.accept()
                accepted.close()
            dispatcher.wait_for_log(f"RabbitMQ is unreachable at 127.0.0.1:{port}")
            assert dispatcher.process is not None and dispatcher.process.poll() is None
            assert dispatcher.output().count("amqp.unreachable") == 1
        finally:
            assert dispatcher.stop() == 0


def test_a_worker_started_without_redis_says_so_and_stops_on_sigterm(
    settings: Settings,
) -> None:
    env = service_env(settings) | {"OMNIPUSH_REDIS_URL": "redis://127.0.0.1:1/0"}
    worker = Service(args=["serve", "worker", "--channel", "web"], env=env).start()
    try:
        worker.wait_for_log("Redis is unreachable at 127.0.0.1:1")
        assert worker.process is not None and worker.process.poll() is None
    finally:
        assert worker.stop() == 0


def test_sigterm_stops_a_worker_cleanly(settings: Settings) -> None:
    worker = Service(args=["serve", "worker", "--channel", "web"], env=service_env(settings))
    worker.start()
    worker.wait_for_log("amqp.ready")
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(20) == 0
    assert "consumer.stopped" in worker.output()
    assert "Traceback" not in worker.output()


def test_the_api_logs_json_lines_including_gunicorns_own(settings: Settings) -> None:
    port = free_port()
    env = service_env(settings) | {"OMNIPUSH_API_BIND": f"127.0.0.1:{port}"}
    api = Service(args=["serve", "api", "--workers", "1"], env=env).start()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz")
    finally:
        assert api.stop() == 0
    lines = [json.loads(line) for line in api.output().splitlines() if line.strip()]
    assert any(line["event"].startswith("Listening at") for line in lines)
    assert {line["service"] for line in lines} == {"api"}


def _json_object(line: str) -> dict[str, object] | None:
    try:
        parsed = json.loads(line)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_omnipush_log_format_chooses_console_or_json_lines_gunicorns_included(
    settings: Settings, log_format: str
) -> None:
    port = free_port()
    env = service_env(settings) | {
        "OMNIPUSH_API_BIND": f"127.0.0.1:{port}",
        "OMNIPUSH_LOG_FORMAT": log_format,
    }
    api = Service(args=["serve", "api", "--workers", "1"], env=env).start()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz")
    finally:
        assert api.stop() == 0
    lines = [line for line in api.output().splitlines() if line.strip()]
    assert any("Listening at" in line for line in lines)
    as_json = [_json_object(line) for line in lines]
    if log_format == "json":
        assert all(as_json), api.output()
    else:
        assert not any(as_json), api.output()
        assert all("api" in line for line in lines), api.output()
