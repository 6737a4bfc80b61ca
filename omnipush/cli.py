"""The `omnipush` command line: migrations, apps, browser tokens, VAPID keys, traces, stats,
dead letters and `serve <service>`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from shared.config_file import ConfigError
from shared.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from producer_api.api_keys import KeyInfo

SERVICES = ("api", "relay", "dispatcher", "worker", "callbacks", "gateway")


@contextmanager
def _store() -> Iterator[Engine]:
    """An engine on the configured store for one command; an unreachable store is a clear
    error, not a traceback."""
    from sqlalchemy.exc import OperationalError

    from shared.db import make_engine

    engine = make_engine(_settings().database_url)
    try:
        yield engine
    except OperationalError as error:
        raise click.ClickException(f"cannot reach the store: {error.orig}") from error
    finally:
        engine.dispose()


@contextmanager
def _store_transaction() -> Iterator[Session]:
    """A session in one transaction on the configured store, committed when the command ends."""
    from shared.db import make_session_factory

    with _store() as engine, make_session_factory(engine)() as session, session.begin():
        yield session


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except RuntimeError as error:
        raise click.ClickException(str(error)) from error


@click.group()
def main() -> None:
    """omnipush: one REST call, every channel."""


@main.group()
def db() -> None:
    """The store's schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the store's migrations."""
    from sqlalchemy.exc import OperationalError

    from shared.migrate import upgrade

    settings = _settings()
    try:
        upgrade(settings.database_url, revision)
    except OperationalError as error:
        raise click.ClickException(f"cannot reach the store: {error.orig}") from error
    click.echo("store is up to date", err=True)


@main.group()
def apps() -> None:
    """Business systems allowed to send."""


_RATE_LIMIT = click.option(
    "--rate-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Requests per second for this app's key (default: OMNIPUSH_API_RATE_LIMIT).",
)
_BURST = click.option(
    "--burst",
    type=click.IntRange(min=1),
    default=None,
    help="Requests allowed at once above the rate (default: OMNIPUSH_API_RATE_BURST).",
)


@apps.command("create")
@click.argument("name")
@_RATE_LIMIT
@_BURST
def apps_create(name: str, rate_limit: float | None, burst: int | None) -> None:
    """Create an app and print its id and API key (shown only this once)."""
    from producer_api.api_keys import create_app_with_key

    try:
        with _store_transaction() as session:
            created = create_app_with_key(session, name, rate_limit, burst)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    click.echo(json.dumps({"app_id": created.app_id, "api_key": created.api_key}))


@apps.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of lines.")
def apps_list(as_json: bool) -> None:
    """List every app: id, name, when it was created and how many keys it has that work."""
    from producer_api.api_keys import list_apps

    with _store_transaction() as session:
        found = list_apps(session)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "app_id": app.app_id,
                        "name": app.name,
                        "created_at": app.created_at.isoformat(),
                        "keys": app.active_keys,
                        "rate_limit": app.rate_limit,
                        "burst": app.rate_burst,
                    }
                    for app in found
                ]
            )
        )
        return
    for app in found:
        plural = "" if app.active_keys == 1 else "s"
        click.echo(
            f"{app.app_id}  {app.created_at:%Y-%m-%d %H:%M:%S}Z  "
            f"{app.active_keys} key{plural}  {app.name}"
        )


_RECIPIENTS_PER_REQUEST = click.option(
    "--recipients-per-request",
    type=click.IntRange(min=1),
    default=None,
    help="Recipients one request may ask for, a topic counting its subscribers "
    "(default: OMNIPUSH_MAX_RECIPIENTS_PER_REQUEST).",
)
_RECIPIENTS_PER_MINUTE = click.option(
    "--recipients-per-minute",
    type=click.IntRange(min=1),
    default=None,
    help="Recipients per minute (default: OMNIPUSH_MAX_RECIPIENTS_PER_MINUTE).",
)
_TOPIC_SUBSCRIBERS = click.option(
    "--topic-subscribers",
    type=click.IntRange(min=1),
    default=None,
    help="Subscribers one topic may have (default: OMNIPUSH_MAX_TOPIC_SUBSCRIBERS).",
)


@apps.command("limit")
@click.argument("app_id")
@_RATE_LIMIT
@_BURST
@_RECIPIENTS_PER_REQUEST
@_RECIPIENTS_PER_MINUTE
@_TOPIC_SUBSCRIBERS
def apps_limit(
    app_id: str,
    rate_limit: float | None,
    burst: int | None,
    recipients_per_request: int | None,
    recipients_per_minute: int | None,
    topic_subscribers: int | None,
) -> None:
    """Set APP_ID's own limits; each one not given goes back to its default.

    Running API processes apply them within 5 seconds.
    """
    from producer_api.api_keys import set_limit
    from producer_api.fanout import set_fanout_limits

    with _store_transaction() as session:
        found = set_limit(session, app_id, rate_limit, burst) and set_fanout_limits(
            session, app_id, recipients_per_request, recipients_per_minute, topic_subscribers
        )
    if not found:
        raise click.ClickException(f"no app {app_id}")
    click.echo(
        json.dumps(
            {
                "app_id": app_id,
                "rate_limit": rate_limit,
                "burst": burst,
                "recipients_per_request": recipients_per_request,
                "recipients_per_minute": recipients_per_minute,
                "topic_subscribers": topic_subscribers,
            }
        )
    )


@apps.command("callback")
@click.argument("app_id")
@click.option("--url", default=None, help="Where the app's messages' final status is POSTed.")
@click.option("--clear", is_flag=True, help="Remove the app's default callback URL.")
def apps_callback(app_id: str, url: str | None, clear: bool) -> None:
    """Show or set APP_ID's default status callback URL (for messages that name none), and
    print the secret its callbacks are signed with (Standard Webhooks)."""
    from sqlalchemy import select

    from shared.models import App
    from shared.outbound import OutboundPolicy, OutboundRefused
    from shared.outbox import callback_secret

    if url is not None and clear:
        raise click.UsageError("give --url or --clear, not both")
    settings = _settings()
    if url is not None:
        try:
            OutboundPolicy(allow=settings.outbound_allow).check_url(url)
        except OutboundRefused as refused:
            raise click.ClickException(f"--url: {refused}") from refused
    with _store_transaction() as session:
        app = session.scalar(select(App).where(App.id == app_id))
        if app is None:
            raise click.ClickException(f"no app {app_id}")
        if url is not None or clear:
            app.callback_url = url
        shown = app.callback_url
    secret = callback_secret(settings.secret_key, app_id)
    click.echo(json.dumps({"app_id": app_id, "callback_url": shown, "secret": secret}))


def _key_json(key: KeyInfo) -> dict[str, str | None]:
    return {
        "key_id": key.key_id,
        "app_id": key.app_id,
        "prefix": key.prefix,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


@apps.command("keys")
@click.argument("app_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of lines.")
def apps_keys(app_id: str, as_json: bool) -> None:
    """List APP_ID's API keys (their ids and first characters, never the keys themselves)."""
    from producer_api.api_keys import list_keys

    with _store_transaction() as session:
        keys = list_keys(session, app_id)
    if keys is None:
        raise click.ClickException(f"no app {app_id}")
    if as_json:
        click.echo(json.dumps([_key_json(key) for key in keys]))
        return
    for key in keys:
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M:%S}Z" if key.revoked_at else "active"
        click.echo(
            f"{key.key_id}  {key.prefix}...  created {key.created_at:%Y-%m-%d %H:%M:%S}Z  {state}"
        )


@apps.command("key-create")
@click.argument("app_id")
def apps_key_create(app_id: str) -> None:
    """Give APP_ID another API key and print it (shown only this once) with its id."""
    from producer_api.api_keys import create_key

    with _store_transaction() as session:
        created = create_key(session, app_id)
    if created is None:
        raise click.ClickException(f"no app {app_id}")
    click.echo(json.dumps({"key_id": created.key_id, "api_key": created.api_key}))


@apps.command("key-revoke")
@click.argument("key_id")
def apps_key_revoke(key_id: str) -> None:
    """Revoke the API key KEY_ID; running API processes refuse it within 5 seconds."""
    from producer_api.api_keys import revoke_key

    with _store_transaction() as session:
        revoked = revoke_key(session, key_id)
    if revoked is None:
        raise click.ClickException(f"no API key {key_id}")
    click.echo(json.dumps(_key_json(revoked)))


@main.command("token")
@click.argument("app_id")
@click.argument("user_id")
@click.option("--ttl", type=click.IntRange(1, 86400), default=3600, show_default=True)
def token(app_id: str, user_id: str, ttl: int) -> None:
    """Print a browser token for USER_ID of APP_ID."""
    from producer_api.api_keys import app_exists
    from shared.tokens import mint_browser_token

    with _store_transaction() as session:
        if not app_exists(session, app_id):
            raise click.ClickException(f"no app {app_id}")
    value, _expires = mint_browser_token(_settings().secret_key, app_id, user_id, ttl)
    click.echo(value)


@main.command("trace")
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of lines.")
def trace(message_id: str, as_json: bool) -> None:
    """Show what happened to MESSAGE_ID: its timeline, one line per event."""
    from dataclasses import asdict

    from omnipush.trace import load_trace, render

    with _store() as engine:
        found = load_trace(engine, message_id)
    if found is None:
        raise click.ClickException(f"no message {message_id}")
    click.echo(json.dumps(asdict(found), default=str) if as_json else render(found))


@main.command("stats")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
def stats(as_json: bool) -> None:
    """Per channel: queued, in flight, sent / failed / retrying in the last minute and hour,
    dead letters, and open breakers."""
    import redis

    from omnipush.stats import as_json as stats_json
    from omnipush.stats import collect, render

    settings = _settings()
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        with _store() as engine, engine.connect() as connection:
            found = collect(connection, client, settings.queue_prefix)
    finally:
        client.close()
    if not found.breakers_known:
        click.echo("warning: Redis did not answer; open breakers are unknown", err=True)
    click.echo(json.dumps(stats_json(found)) if as_json else render(found))


@main.group()
def dead() -> None:
    """Deliveries that failed for good: list them, replay them."""


@dead.command("list")
@click.option("--channel", help="Only this channel's.")
@click.option("--app", "app_id", help="Only this app's.")
@click.option("--replayed", is_flag=True, help="Include those already replayed.")
@click.option("--limit", type=click.IntRange(1, 10000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of lines.")
def dead_list(
    channel: str | None, app_id: str | None, replayed: bool, limit: int, as_json: bool
) -> None:
    """List dead letters, oldest first."""
    from dataclasses import asdict

    from shared.dead_letters import DeadLetterFilter, list_dead_letters

    with _store() as engine, engine.connect() as connection:
        found, more = list_dead_letters(
            connection,
            DeadLetterFilter(app_id=app_id, channel=channel),
            limit=limit,
            include_replayed=replayed,
        )
    if as_json:
        click.echo(json.dumps([asdict(item) for item in found], default=str))
        return
    for item in found:
        state = f"  replayed {item.replayed_at:%Y-%m-%d %H:%M:%S}Z" if item.replayed_at else ""
        click.echo(
            f"{item.id}  {item.failed_at:%Y-%m-%d %H:%M:%S}Z  {item.channel}  {item.app_id}  "
            f"{item.delivery_id}  attempts={item.attempts}  {item.reason or ''}{state}"
        )
    if more is not None:
        click.echo(f"(more than {limit}; narrow with --channel/--app or raise --limit)", err=True)


@dead.command("replay")
@click.argument("dead_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter waiting (filtered).")
@click.option("--channel", help="With --all: only this channel's.")
@click.option("--app", "app_id", help="With --all: only this app's.")
def dead_replay(
    dead_id: str | None, replay_all: bool, channel: str | None, app_id: str | None
) -> None:
    """Send DEAD_ID again (or, with --all, every dead letter waiting for a replay)."""
    from shared.dead_letters import (
        DeadLetterFilter,
        ReplayOutcome,
        replay_matching,
        replay_one,
    )

    if (dead_id is None) == (not replay_all):
        raise click.UsageError("give one dead letter ID or --all")
    if dead_id is not None and (channel or app_id):
        raise click.UsageError("--channel and --app go with --all")
    with _store() as engine:
        if dead_id is not None:
            outcome = replay_one(engine, dead_id)
            if outcome is ReplayOutcome.UNKNOWN:
                raise click.ClickException(f"no dead letter {dead_id}")
            if outcome is ReplayOutcome.ALREADY_REPLAYED:
                raise click.ClickException(f"dead letter {dead_id} was replayed already")
            click.echo(f"replayed {dead_id}")
            return
        done = replay_matching(
            engine,
            DeadLetterFilter(app_id=app_id, channel=channel),
            lambda done, total: click.echo(f"replayed {done}/{total}", err=True),
        )
    click.echo(f"replayed {done} dead letters" + ("" if done else " (none waiting)"))


@main.group()
def vapid() -> None:
    """The Web Push (VAPID) key of `[webpush]`."""


@vapid.command("generate")
def vapid_generate() -> None:
    """Print a new VAPID key pair as a `[webpush]` section to paste into omnipush.toml."""
    from channels.vapid import VapidKey

    key = VapidKey.generate()
    click.echo("[webpush]")
    click.echo(f'vapid_private_key = "{key.private_b64()}"')
    click.echo('vapid_subject = "mailto:ops@example.com"  # a contact of yours (or https://)')
    click.echo("# applicationServerKey for PushManager.subscribe() in the browser:")
    click.echo(f"# {key.public_b64()}")


@main.group()
def dev() -> None:
    """Local development helpers used by `make run`."""


@dev.command("prepare")
def dev_prepare() -> None:
    """Check dependencies, migrate, ensure a demo app, write var/Procfile, print the URLs."""
    from omnipush.dev import prepare

    prepare(_settings())


@main.command("serve")
@click.argument("service", type=click.Choice(SERVICES))
@click.option("--channel", help="The channel a worker sends on (worker only).")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="HTTP worker processes.")
def serve(service: str, channel: str | None, workers: int | None) -> None:
    """Run one service in the foreground until SIGTERM."""
    from shared.logging import configure_logging

    if service == "worker" and not channel:
        raise click.UsageError("serve worker needs --channel NAME")
    if service != "worker" and channel:
        raise click.UsageError("--channel is for serve worker only")
    settings = _settings()
    configure_logging(service if service != "worker" else f"worker-{channel}", settings.log_format)
    from omnipush import services

    if service == "worker":
        assert channel is not None
        try:
            services.run_worker(settings, channel)
        except KeyError as error:
            raise click.ClickException(str(error.args[0])) from error
        except ConfigError as error:  # the channel refused its settings, naming the key
            raise click.ClickException(str(error)) from error
        return
    runners = {
        "api": lambda: services.run_api(settings, workers),
        "relay": lambda: services.run_relay(settings),
        "dispatcher": lambda: services.run_dispatcher(settings),
        "callbacks": lambda: services.run_callbacks(settings),
        "gateway": lambda: services.run_gateway(settings),
    }
    runners[service]()
    sys.exit(0)
