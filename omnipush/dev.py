"""`omnipush dev prepare`: everything `make run` does before it starts the services.

It checks that the store, RabbitMQ and Redis answer within seconds (and says, one line for each
that does not, how to start it), migrates the store, makes sure a demo app exists, writes the
Procfile honcho runs, and prints where everything is with a demo API key and a demo page link.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from channels.registry import configured_channels
from producer_api.api_keys import app_for_key, create_app_with_key
from shared.migrate import upgrade
from shared.readiness import check_dependencies
from shared.runtime import Runtime
from shared.settings import (
    METRICS_HOST,
    WORKER_METRICS_BASE_PORT,
    Settings,
    default_metrics_port,
)
from shared.tokens import mint_browser_token

DEMO_APP_FILE = Path("var/demo-app.json")
PROCFILE = Path("var/Procfile")
DEMO_USER = "alice"

HOW_TO_START = {
    "broker": "RabbitMQ: start it with `rabbitmq-server -detached` "
    "(or `docker compose up -d rabbitmq`), or set OMNIPUSH_AMQP_URL",
    "redis": "Redis: start it with `redis-server --daemonize yes` "
    "(or `docker compose up -d redis`), or set OMNIPUSH_REDIS_URL",
    "store": "the store: check OMNIPUSH_DATABASE_URL",
}


def procfile(channels: tuple[str, ...]) -> str:
    """One line per service, with a worker per configured channel."""
    lines = [
        "api: omnipush serve api",
        "relay: omnipush serve relay",
        "dispatcher: omnipush serve dispatcher",
        *(f"worker-{name}: omnipush serve worker --channel {name}" for name in channels),
        "callbacks: omnipush serve callbacks",
        "gateway: omnipush serve gateway",
    ]
    return "\n".join(lines) + "\n"


def metrics_line(settings: Settings) -> str:
    """Where the services without HTTP of their own serve `GET /metrics`."""
    if settings.metrics_bind is not None:
        return f"OMNIPUSH_METRICS_BIND={settings.metrics_bind}"
    ports = ", ".join(
        f"{name} :{default_metrics_port(name)}" for name in ("relay", "dispatcher", "callbacks")
    )
    return f"{METRICS_HOST}: {ports}, workers :{WORKER_METRICS_BASE_PORT} and up (README)"


def demo_app(runtime: Runtime) -> tuple[str, str]:
    """The demo app's id and key: the one saved in var/, or a new one if that is gone."""
    if DEMO_APP_FILE.exists():
        saved = json.loads(DEMO_APP_FILE.read_text())
        with runtime.sessions() as session:
            if app_for_key(session, saved["api_key"]) == saved["app_id"]:
                return saved["app_id"], saved["api_key"]
    with runtime.sessions() as session, session.begin():
        created = create_app_with_key(session, "demo")
    DEMO_APP_FILE.parent.mkdir(parents=True, exist_ok=True)
    DEMO_APP_FILE.write_text(json.dumps({"app_id": created.app_id, "api_key": created.api_key}))
    DEMO_APP_FILE.chmod(0o600)
    return created.app_id, created.api_key


def prepare(settings: Settings) -> None:
    runtime = Runtime.build(settings)
    try:
        checks = check_dependencies(runtime)
        missing = [name for name, state in checks.items() if state != "ok"]
        if missing:
            # One line per service that cannot be reached, saying how to start it.
            raise click.ClickException(
                "\n".join(f"cannot reach {HOW_TO_START[name]} ({checks[name]})" for name in missing)
            )
        upgrade(settings.database_url)
        app_id, api_key = demo_app(runtime)
    finally:
        runtime.close()
    PROCFILE.parent.mkdir(parents=True, exist_ok=True)
    PROCFILE.write_text(procfile(configured_channels(settings)))
    token, _ = mint_browser_token(settings.secret_key, app_id, DEMO_USER, 12 * 3600)
    api, gateway = f"http://{settings.api_bind}", f"http://{settings.gateway_bind}"
    example = (
        f"curl -X POST {api}/v1/messages -H 'Authorization: Bearer {api_key}' "
        f'-d \'{{"to":[{{"user_id":"{DEMO_USER}"}}],"channels":["web"],'
        f'"content":{{"title":"Order shipped","body":"It is on its way."}}}}\''
    )
    click.echo(
        "\n".join(
            [
                "",
                "omnipush is starting",
                f"  API           {api}   (docs: {api}/docs, OpenAPI: {api}/openapi.json)",
                f"  gateway       {gateway}",
                f"  demo app      {app_id}",
                f"  demo API key  {api_key}",
                f"  demo page     {gateway}/demo?token={token}",
                f"  metrics       {metrics_line(settings)}",
                "",
                f"  try: {example}",
                "",
            ]
        )
    )
