"""Bodies that break a JSON parser or a size limit are 4xx problems from the real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from producer_api.api_keys import NewApp
from shared.runtime import Runtime
from shared.settings import Settings
from tests.api_process import ApiProcess, api_process
from tests.conftest import bearer, new_tenant

PLAIN = {"to": [{"user_id": "alice"}], "channels": ["web"], "content": {"title": "Hi"}}


def with_data(raw_value: str) -> str:
    """A plain message whose `content.data.value` is `raw_value`, as JSON text."""
    return json.dumps({**PLAIN, "content": {"title": "Hi", "data": {"value": 0}}}).replace(
        '"value": 0', f'"value": {raw_value}'
    )


# name, body, what the problem's detail says
BAD_JSON = [
    ("arrays nested 100,000 deep", "[" * 100_000 + "]" * 100_000, "levels deep"),
    ("data nested 2,000 deep", with_data("[" * 2_000 + "]" * 2_000), "levels deep"),
    ("a 5,000-digit integer", with_data("1" * 5_000), "digits"),
]
# name, method, path, extra headers: the fast path, the Flask views, a view of another resource
ROUTES = [
    ("fast path", "POST", "/v1/messages", {}),
    ("message view", "POST", "/v1/messages", {"Idempotency-Key": "bad-json"}),
    ("batch view", "POST", "/v1/messages/batch", {}),
    ("user view", "PUT", "/v1/users/bob", {}),
]


@pytest.fixture(scope="module")
def server(inprocess_settings: Settings) -> Iterator[ApiProcess]:
    with api_process(inprocess_settings) as running:
        yield running


@pytest.fixture(scope="module")
def sender(inprocess_runtime: Runtime) -> NewApp:
    return new_tenant(inprocess_runtime)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


@pytest.mark.parametrize(("name", "body", "says"), BAD_JSON, ids=[b[0] for b in BAD_JSON])
@pytest.mark.parametrize(("route", "method", "path", "headers"), ROUTES, ids=[r[0] for r in ROUTES])
def test_json_beyond_the_parsers_limits_is_a_400(
    server: ApiProcess,
    sender: NewApp,
    name: str,
    body: str,
    says: str,
    route: str,
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    response = httpx.request(
        method,
        server.url + path,
        content=body,
        headers={**bearer(sender), **headers, "Content-Type": "application/json"},
        timeout=30,
    )
    problem = assert_problem(response, 400)
    assert says in problem["detail"], (name, route)
    assert "Traceback" not in server.service.output()


@pytest.mark.parametrize(("name", "body", "says"), BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_bad_json_without_an_api_key_is_a_401(
    server: ApiProcess, name: str, body: str, says: str
) -> None:
    response = httpx.post(server.url + "/v1/messages", content=body, timeout=30)
    assert_problem(response, 401)


def chunked(body: bytes) -> Iterator[bytes]:
    """`body` in pieces, which httpx sends with `Transfer-Encoding: chunked`."""
    for start in range(0, len(body), 64 * 1024):
        yield body[start : start + 64 * 1024]


def message_of(size: int) -> dict[str, Any]:
    return {**PLAIN, "content": {"title": "Hi", "body": "b" * size}}


# name, path, body, expected status: each route's own limit applies to a body with no length
CHUNKED = [
    ("small message", "/v1/messages", message_of(100), 202),
    ("message over 256 KiB", "/v1/messages", message_of(300 * 1024), 413),
    ("batch over 256 KiB, under 4 MiB", "/v1/messages/batch", {"messages": [PLAIN] * 4000}, 422),
    ("batch over 4 MiB", "/v1/messages/batch", {"messages": [message_of(3000)] * 1500}, 413),
]


@pytest.mark.parametrize(("name", "path", "body", "status"), CHUNKED, ids=[c[0] for c in CHUNKED])
def test_chunked_bodies_are_held_to_their_routes_limit(
    server: ApiProcess, sender: NewApp, name: str, path: str, body: Any, status: int
) -> None:
    raw = json.dumps(body).encode()
    response = httpx.post(
        server.url + path, content=chunked(raw), headers=bearer(sender), timeout=30
    )
    assert "content-length" not in response.request.headers
    if status >= 400:
        problem = assert_problem(response, status)
        if status == 422:
            # Read whole and parsed: only the schema's 500-message cap refused it.
            assert set(problem["errors"]) == {"messages"}
    else:
        assert response.status_code == status, response.text
