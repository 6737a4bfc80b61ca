"""The fast path for plain single messages answers exactly as the Flask view would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from producer_api.api_keys import NewApp, create_app_with_key
from producer_api.fast_accept import FastAccept
from shared.runtime import Runtime
from tests.conftest import bearer

PLAIN = {"to": [{"user_id": "alice"}], "channels": ["web"], "content": {"title": "Hi"}}


@pytest.fixture
def paths(api_app: Flask) -> Iterator[tuple[FastAccept, list[str]]]:
    """The API's fast path, and a log of the requests it handed to the Flask app."""
    fast = api_app.wsgi_app
    assert isinstance(fast, FastAccept)
    flask_app, handed = fast.app, []

    def counting(environ: dict[str, Any], start_response: Any) -> Any:
        handed.append(environ["PATH_INFO"])
        return flask_app(environ, start_response)

    fast.app = counting
    try:
        yield fast, handed
    finally:
        fast.app = flask_app


def answer(client: FlaskClient, **request: Any) -> tuple[int, str, dict[str, Any], str]:
    response = client.post("/v1/messages", **request)
    body = json.loads(response.get_data())
    shape = {key: "*" if key in ("id", "created_at") else value for key, value in body.items()}
    location = response.headers.get("Location", "")
    return response.status_code, str(response.mimetype), shape, location


# name, request (the tenant's key is added), whether the fast path keeps it
CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("plain", {"json": PLAIN}, True),
    ("plain, form-encoded", {"data": json.dumps(PLAIN)}, True),
    ("topic", {"json": {**PLAIN, "to": [{"topic": "none"}]}}, False),
    (
        "template",
        {"json": {**{k: v for k, v in PLAIN.items() if k != "content"}, "template": "t"}},
        False,
    ),
    ("idempotency key", {"json": PLAIN, "headers": {"Idempotency-Key": "k"}}, False),
    ("send_at", {"json": {**PLAIN, "send_at": "2020-01-01T00:00:00Z"}}, False),
    ("not JSON", {"data": "{not json"}, False),
    ("unknown field", {"json": {**PLAIN, "colour": "red"}}, False),
    ("NUL in title", {"json": {**PLAIN, "content": {"title": "a\u0000b"}}}, False),
    ("no key", {"json": PLAIN, "headers": {"Authorization": ""}}, False),
    ("wrong key", {"json": PLAIN, "headers": {"Authorization": "Bearer nope"}}, False),
    ("too big", {"json": {**PLAIN, "content": {"title": "x", "body": "b" * 300_000}}}, False),
]


@pytest.mark.parametrize(("name", "request_", "kept"), CASES, ids=[c[0] for c in CASES])
def test_the_fast_path_answers_as_the_flask_view_does(
    client: FlaskClient,
    tenant: NewApp,
    paths: tuple[FastAccept, list[str]],
    name: str,
    request_: dict[str, Any],
    kept: bool,
) -> None:
    fast, handed = paths
    request_ = {**request_, "headers": {**bearer(tenant), **request_.get("headers", {})}}
    through_fast = answer(client, **request_)
    assert handed == ([] if kept else ["/v1/messages"]), name
    # The Flask app alone, for comparison.
    client.application.wsgi_app = fast.app  # type: ignore[method-assign,assignment]
    try:
        through_flask = answer(client, **request_)
    finally:
        client.application.wsgi_app = fast  # type: ignore[method-assign]
    assert through_fast[:3] == through_flask[:3]
    assert through_fast[3].rsplit("/", 1)[0] == through_flask[3].rsplit("/", 1)[0]


def test_a_fast_message_is_stored_as_any_other(
    client: FlaskClient, tenant: NewApp, paths: tuple[FastAccept, list[str]]
) -> None:
    accepted = client.post("/v1/messages", json=PLAIN, headers=bearer(tenant)).get_json()
    assert paths[1] == []
    shown = client.get(f"/v1/messages/{accepted['id']}", headers=bearer(tenant)).get_json()
    assert shown["status"] in ("accepted", "queued", "dispatched", "completed")
    assert shown["content"] == {"title": "Hi", "body": "", "url": None, "data": {}}
    assert shown["created_at"] == accepted["created_at"]
    assert shown["events"][0]["stage"] == "accepted"


def test_the_fast_path_honours_the_rate_limit(
    client: FlaskClient, runtime: Runtime, paths: tuple[FastAccept, list[str]]
) -> None:
    with runtime.sessions() as session, session.begin():
        tenant = create_app_with_key(session, "tight", rate_limit=0.01, rate_burst=1)
    statuses = [
        client.post("/v1/messages", json=PLAIN, headers=bearer(tenant)).status_code
        for _ in range(2)
    ]
    assert statuses == [202, 429]
