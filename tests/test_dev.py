"""`make run`'s preparation step: dependencies checked, demo app kept, Procfile and URLs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from omnipush.dev import procfile
from shared.settings import Settings
from tests.conftest import service_env
from tests.stack import ROOT, run_omnipush


def prepare(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_omnipush("dev", "prepare", env=env, cwd=cwd)


def test_prepare_prints_the_urls_a_demo_key_and_link_and_keeps_the_demo_app(
    settings: Settings, tmp_path: Path
) -> None:
    first = prepare(service_env(settings), tmp_path)
    assert first.returncode == 0, first.stderr
    saved = json.loads((tmp_path / "var" / "demo-app.json").read_text())
    assert saved["api_key"] in first.stdout
    assert f"http://{settings.api_bind}" in first.stdout
    assert f"http://{settings.gateway_bind}/demo?token=" in first.stdout
    workers = [
        line
        for line in (tmp_path / "var" / "Procfile").read_text().splitlines()
        if "worker" in line
    ]
    assert "worker-web: omnipush serve worker --channel web" in workers

    again = prepare(service_env(settings), tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "var" / "demo-app.json").read_text()) == saved


def test_prepare_names_a_missing_broker_and_redis_and_how_to_start_them(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIPUSH_")}
    env["OMNIPUSH_AMQP_URL"] = "amqp://guest:guest@127.0.0.1:1/%2F"
    env["OMNIPUSH_REDIS_URL"] = "redis://127.0.0.1:1/0"
    result = prepare(env, tmp_path)
    assert result.returncode == 1
    assert "RabbitMQ: start it with `rabbitmq-server -detached`" in result.stderr
    assert "Redis: start it with `redis-server" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var" / "Procfile").exists()


def test_the_procfile_runs_every_service_with_a_worker_per_channel() -> None:
    lines = procfile(("web", "email")).splitlines()
    assert lines == [
        "api: omnipush serve api",
        "relay: omnipush serve relay",
        "dispatcher: omnipush serve dispatcher",
        "worker-web: omnipush serve worker --channel web",
        "worker-email: omnipush serve worker --channel email",
        "callbacks: omnipush serve callbacks",
        "gateway: omnipush serve gateway",
    ]


def test_make_run_starts_the_services_with_console_logs_unless_told_otherwise() -> None:
    def honcho_command(env: dict[str, str]) -> str:
        planned = subprocess.run(
            ["make", "-n", "run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert planned.returncode == 0, planned.stderr
        # `make -n` prints the recipe as written, continuation lines included.
        recipe = planned.stdout.replace("\\\n", " ")
        return next(line for line in recipe.splitlines() if "honcho" in line)

    env = {k: v for k, v in os.environ.items() if k != "OMNIPUSH_LOG_FORMAT"}
    assert "OMNIPUSH_LOG_FORMAT=console " in honcho_command(env)
    assert "OMNIPUSH_LOG_FORMAT=json " in honcho_command(env | {"OMNIPUSH_LOG_FORMAT": "json"})


def test_prepare_says_where_the_services_serve_their_metrics(
    settings: Settings, tmp_path: Path
) -> None:
    env = {k: v for k, v in service_env(settings).items() if k != "OMNIPUSH_METRICS_BIND"}
    shown = prepare(env, tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "127.0.0.1: relay :9101, dispatcher :9102, callbacks :9103, workers :9110" in (
        shown.stdout
    )
    assert "OMNIPUSH_METRICS_BIND=off" in prepare(service_env(settings), tmp_path).stdout
