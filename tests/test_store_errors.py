"""A write the store refuses is logged without what it carried: no recipient, no message body."""

from __future__ import annotations

import json
import uuid

import httpx
import psycopg2
from sqlalchemy.engine import make_url

from tests.conftest import PG_ADMIN_DSN, isolated_settings, service_env
from tests.stack import Service, run_omnipush, wait_http_ok


def _make_read_only(database_url: str) -> None:
    """Every new session of the database refuses writes, as a store in recovery would."""
    connection = psycopg2.connect(PG_ADMIN_DSN)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(
            f"ALTER DATABASE {make_url(database_url).database} "
            "SET default_transaction_read_only = on"
        )
    connection.close()


def test_a_failed_insert_logs_neither_the_body_nor_the_recipient() -> None:
    body = f"body-{uuid.uuid4().hex}"
    user = f"user-{uuid.uuid4().hex}"
    with isolated_settings() as settings:
        env = service_env(settings)
        created = run_omnipush("apps", "create", "store-errors", env=env)
        assert created.returncode == 0, created.stderr
        api_key = json.loads(created.stdout)["api_key"]
        _make_read_only(settings.database_url)
        api = Service(args=["serve", "api", "--workers", "1"], env=env).start()
        try:
            wait_http_ok(f"http://{settings.api_bind}/healthz")
            response = httpx.post(
                f"http://{settings.api_bind}/v1/messages",
                headers={"Authorization": f"Bearer {api_key}"},
                json={
                    "to": [{"user_id": user}],
                    "channels": ["web"],
                    "content": {"title": "t", "body": body},
                },
                timeout=30,
            )
            assert response.status_code >= 500, response.text
            # The failure itself is logged (so the check below is not vacuous) ...
            api.wait_for_log("read-only transaction")
        finally:
            api.stop()
    # ... but not the statement's parameters.
    assert body not in api.output()
    assert user not in api.output()
    assert "parameters hidden" in api.output()
