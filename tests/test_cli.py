"""The `omnipush` command line as an operator uses it."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def test_token_prints_a_browser_jwt_for_the_user(settings: Settings) -> None:
    result = run_omnipush("token", "app_x", "alice", "--ttl", "60", env=service_env(settings))
    assert result.returncode == 0, result.stderr
    identity = verify_browser_token(settings.secret_key, result.stdout.strip())
    assert (identity.app_id, identity.user_id) == ("app_x", "alice")


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
    for args in (["apps", "create", "shop"], ["apps", "limit", "app_x"], ["trace", "msg_x"]):
        result = run_omnipush(*args, env=env, cwd=tmp_path)
        assert result.returncode == 1, args
        assert "cannot reach the store" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
