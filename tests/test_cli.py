"""The `omnipush` command line as an operator uses it."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from producer_api.api_keys import NewApp, app_for_key
from shared.runtime import Runtime
from shared.settings import Settings
from shared.tokens import verify_browser_token
from tests.conftest import service_env
from tests.stack import run_omnipush


def test_apps_create_prints_one_json_object_with_a_working_key(settings: Settings) -> None:
    result = run_omnipush("apps", "create", "shop", env=service_env(settings))
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert set(created) == {"app_id", "api_key"}
    assert created["api_key"].startswith("op_")


def _json(*args: str, settings: Settings) -> Any:
    result = run_omnipush(*args, env=service_env(settings))
    assert result.returncode == 0, (args, result.stderr)
    return json.loads(result.stdout)


def test_token_prints_a_browser_jwt_for_the_user(settings: Settings, tenant: NewApp) -> None:
    env = service_env(settings)
    result = run_omnipush("token", tenant.app_id, "alice", "--ttl", "60", env=env)
    assert result.returncode == 0, result.stderr
    identity = verify_browser_token(settings.secret_key, result.stdout.strip())
    assert (identity.app_id, identity.user_id) == (tenant.app_id, "alice")


def test_token_for_an_app_that_does_not_exist_is_an_error(settings: Settings) -> None:
    result = run_omnipush("token", "app_nope", "alice", env=service_env(settings))
    assert result.returncode == 1
    assert "no app app_nope" in result.stderr
    assert result.stdout == ""


def test_an_app_gets_more_keys_and_a_revoked_one_stops_working(
    settings: Settings, runtime: Runtime
) -> None:
    first = _json("apps", "create", "rotating", settings=settings)
    app_id = first["app_id"]
    second = _json("apps", "key-create", app_id, settings=settings)
    assert set(second) == {"key_id", "api_key"}
    assert second["api_key"].startswith("op_") and second["api_key"] != first["api_key"]
    with runtime.sessions() as session:
        assert app_for_key(session, second["api_key"]) == app_id

    listed = run_omnipush("apps", "keys", app_id, env=service_env(settings))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and all(line.endswith("active") for line in lines), lines
    assert second["key_id"] in lines[1]
    for key in (first["api_key"], second["api_key"]):
        assert key not in listed.stdout and key[:20] not in listed.stdout

    revoked = _json("apps", "key-revoke", second["key_id"], settings=settings)
    assert revoked["key_id"] == second["key_id"] and revoked["app_id"] == app_id
    revoked_at = datetime.fromisoformat(revoked["revoked_at"])
    with runtime.sessions() as session:
        assert app_for_key(session, second["api_key"]) is None
        assert app_for_key(session, first["api_key"]) == app_id
    keys = _json("apps", "keys", app_id, "--json", settings=settings)
    assert [(k["key_id"] == second["key_id"], k["revoked_at"] is not None) for k in keys] == [
        (False, False),
        (True, True),
    ]
    assert {"key_id", "prefix", "created_at", "revoked_at"} <= set(keys[0])
    assert first["api_key"].startswith(keys[0]["prefix"])
    # Revoking again changes nothing: the key stays revoked since the first time.
    again = _json("apps", "key-revoke", second["key_id"], settings=settings)
    assert datetime.fromisoformat(again["revoked_at"]) == revoked_at


def test_apps_list_shows_every_app_with_its_working_keys(settings: Settings) -> None:
    created = _json("apps", "create", "listed shop", settings=settings)
    extra = _json("apps", "key-create", created["app_id"], settings=settings)
    _json("apps", "key-create", created["app_id"], settings=settings)
    _json("apps", "key-revoke", extra["key_id"], settings=settings)
    apps = {app["app_id"]: app for app in _json("apps", "list", "--json", settings=settings)}
    shown = apps[created["app_id"]]
    assert (shown["name"], shown["keys"]) == ("listed shop", 2)
    datetime.fromisoformat(shown["created_at"])
    lines = run_omnipush("apps", "list", env=service_env(settings)).stdout.splitlines()
    line = next(line for line in lines if line.startswith(created["app_id"]))
    assert line.endswith("2 keys  listed shop"), line


def test_key_commands_name_what_does_not_exist(settings: Settings) -> None:
    env = service_env(settings)
    for args, message in [
        (["apps", "keys", "app_nope"], "no app app_nope"),
        (["apps", "key-create", "app_nope"], "no app app_nope"),
        (["apps", "key-revoke", "key_nope"], "no API key key_nope"),
    ]:
        result = run_omnipush(*args, env=env)
        assert result.returncode == 1, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_db_upgrade_creates_the_default_sqlite_store_in_var(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIPUSH_")}
    result = run_omnipush("db", "upgrade", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "var" / "omnipush.db").exists()
    assert (tmp_path / "var" / "secret_key").exists()


def test_bad_invocations_say_what_is_wrong_without_a_traceback(settings: Settings) -> None:
    env = service_env(settings)
    cases = [
        (["serve", "worker"], "needs --channel"),
        (["serve", "worker", "--channel", "pigeon"], "unknown channel 'pigeon'"),
        (["serve", "teleport"], "Invalid value"),
        (["token", "app", "user", "--ttl", "0"], "Invalid value for '--ttl'"),
        (["apps", "create", "  "], "needs a name"),
    ]
    for args, message in cases:
        result = run_omnipush(*args, env=env)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_an_unreachable_store_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIPUSH_")}
    env["OMNIPUSH_DATABASE_URL"] = "postgresql+psycopg2://nobody@127.0.0.1:1/none"
    result = run_omnipush("db", "upgrade", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot reach the store" in result.stderr
    assert "Traceback" not in result.stderr


def test_commands_on_an_unreachable_store_say_so_without_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIPUSH_")}
    env["OMNIPUSH_DATABASE_URL"] = "postgresql+psycopg2://nobody@127.0.0.1:1/none"
    for args in (
        ["apps", "create", "shop"],
        ["apps", "limit", "app_x"],
        ["apps", "list"],
        ["apps", "keys", "app_x"],
        ["apps", "key-create", "app_x"],
        ["apps", "key-revoke", "key_x"],
        ["token", "app_x", "alice"],
        ["trace", "msg_x"],
    ):
        result = run_omnipush(*args, env=env, cwd=tmp_path)
        assert result.returncode == 1, args
        assert "cannot reach the store" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
