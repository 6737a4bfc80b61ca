"""What a caller is told when the store is slow or away: 202 only after the commit, and 503s that
say truthfully whether the message may have been accepted, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from producer_api.api_keys import NewApp
from producer_api.app import create_app
from producer_api.fast_accept import FastAccept
from shared.models import Message
from shared.runtime import Runtime
from shared.settings import Settings
from tests.api_process import ApiProcess, api_process
from tests.conftest import bearer, isolated_settings, new_tenant
from tests.fault_proxy import FaultProxy
from tests.held_store import messages_locked, statements_waiting_for_a_lock
from tests.stack import wait_until

PLAIN = {"to": [{"user_id": "alice"}], "channels": ["web"], "content": {"title": "Hi"}}
# name, path, extra headers, body: the fast path, the message view and the batch view
SENDS = [
    ("fast path", "/v1/messages", {}, PLAIN),
    ("message view", "/v1/messages", {"Idempotency-Key": "held"}, PLAIN),
    ("batch view", "/v1/messages/batch", {}, {"messages": [PLAIN, PLAIN]}),
]


@pytest.fixture(scope="module")
def own() -> Iterator[tuple[Runtime, ApiProcess]]:
    """A served API on a database of this module's own, whose tables the tests may lock."""
    with isolated_settings() as settings:
        runtime = Runtime.build(settings)
        try:
            with api_process(settings) as api:
                yield runtime, api
        finally:
            runtime.close()


def messages_of(runtime: Runtime, tenant: NewApp) -> int:
    with runtime.engine.connect() as connection:
        count = connection.scalar(select(func.count()).where(Message.app_id == tenant.app_id))
    return int(count or 0)


def assert_unavailable(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["Retry-After"]) >= 1
    body: dict[str, Any] = response.json()
    assert body["status"] == 503
    return body


@pytest.mark.parametrize(("name", "path", "headers", "body"), SENDS, ids=[s[0] for s in SENDS])
def test_the_caller_is_answered_only_once_the_message_is_committed(
    own: tuple[Runtime, ApiProcess], name: str, path: str, headers: dict[str, str], body: Any
) -> None:
    runtime, api = own
    tenant = new_tenant(runtime)
    url = runtime.settings.database_url
    with ThreadPoolExecutor(1) as pool:
        with messages_locked(url):
            sent = pool.submit(
                httpx.post, api.url + path, json=body, headers=bearer(tenant) | headers, timeout=30
            )
            wait_until(lambda: statements_waiting_for_a_lock(url) == 1, 10, "the insert to wait")
            # The insert is in the store, held: the caller has no answer, and nothing is stored.
            assert not sent.done(), sent.result().text
            assert messages_of(runtime, tenant) == 0
        response = sent.result(30)
    assert response.status_code in (200, 202), response.text
    assert messages_of(runtime, tenant) == len(body.get("messages", [body]))


@pytest.fixture
def proxied_store(settings: Settings, runtime: Runtime) -> Iterator[tuple[FaultProxy, ApiProcess]]:
    """A served API whose PostgreSQL connections all pass through a fault proxy."""
    store = make_url(settings.database_url)
    assert store.host is not None and store.port is not None
    with FaultProxy(store.host, store.port) as proxy:
        through_proxy = store.set(port=proxy.port).render_as_string(hide_password=False)
        with api_process(settings, OMNIPUSH_DATABASE_URL=through_proxy) as api:
            yield proxy, api


def send_all(api: ApiProcess, tenant: NewApp) -> dict[str, httpx.Response]:
    """The fast path, the message view and a read, at once."""
    requests = {
        "fast path": ("POST", "/v1/messages", {}),
        "message view": ("POST", "/v1/messages", {"Idempotency-Key": "outage"}),
        "list": ("GET", "/v1/messages", {}),
    }

    def send(name: str) -> httpx.Response:
        method, path, headers = requests[name]
        json = PLAIN if method == "POST" else None
        return httpx.request(
            method, api.url + path, json=json, headers=bearer(tenant) | headers, timeout=30
        )

    with ThreadPoolExecutor(len(requests)) as pool:
        return dict(zip(requests, pool.map(send, requests), strict=True))


def assert_answered_503s(answers: dict[str, httpx.Response]) -> None:
    fast = assert_unavailable(answers["fast path"])
    # The fast path names the message: it may have been accepted, and a GET tells.
    assert "may have been accepted as " + fast["message_id"] in fast["detail"]
    assert "Idempotency-Key" in fast["detail"]
    assert (
        "may or may not have taken effect" in assert_unavailable(answers["message view"])["detail"]
    )
    assert "cannot be reached" in assert_unavailable(answers["list"])["detail"]


@pytest.mark.parametrize("down", ["refuse", "hang"])
def test_requests_while_postgresql_restarts_are_503s_with_retry_after(
    proxied_store: tuple[FaultProxy, ApiProcess], runtime: Runtime, down: str
) -> None:
    proxy, api = proxied_store
    tenant = new_tenant(runtime)
    # Up: the process holds pooled connections (and knows the key).
    assert {r.status_code for r in send_all(api, tenant).values()} <= {200, 202}
    # A restart closes every pooled connection; while the server is down, new connections
    # are refused, or accepted and never answered.
    proxy.drop()
    getattr(proxy, down)()
    answers = send_all(api, tenant)
    assert_answered_503s(answers)
    proxy.resume()

    def accepted_again() -> bool:
        return (
            httpx.post(api.url + "/v1/messages", json=PLAIN, headers=bearer(tenant)).status_code
            == 202
        )

    wait_until(accepted_again, 30, "the API to accept again")
    # It was not accepted after all, and its GET says so, as the 503 promised.
    message_id = answers["fast path"].json()["message_id"]
    gone = httpx.get(f"{api.url}/v1/messages/{message_id}", headers=bearer(tenant))
    assert gone.status_code == 404
    assert "Traceback" not in api.service.output()


def test_reads_right_after_a_postgresql_restart_are_answered_not_refused(
    proxied_store: tuple[FaultProxy, ApiProcess], runtime: Runtime
) -> None:
    proxy, api = proxied_store
    known = new_tenant(runtime)
    assert {r.status_code for r in send_all(api, known).values()} <= {200, 202}
    # The restart is over as the next requests come: every pooled connection is dead, and a
    # read that meets one is tried again on a fresh connection rather than answered 503.
    proxy.drop()
    unseen = new_tenant(runtime)  # its key's look-up is the first read of the store
    listed = httpx.get(f"{api.url}/v1/messages", headers=bearer(unseen), timeout=30)
    assert listed.status_code == 200, listed.text
    again = httpx.get(f"{api.url}/v1/messages", headers=bearer(known), timeout=30)
    assert again.status_code == 200, again.text


def test_a_message_held_past_the_wait_is_a_503_that_says_whether_it_may_be_accepted() -> None:
    with isolated_settings() as settings:
        runtime = Runtime.build(settings)
        try:
            app = create_app(settings, runtime=runtime)
            fast = app.wsgi_app
            assert isinstance(fast, FastAccept)
            fast.committer.timeout = 1.0
            tenant = new_tenant(runtime)
            url = settings.database_url

            def send() -> Any:
                with app.test_client() as client:
                    return client.post("/v1/messages", json=PLAIN, headers=bearer(tenant))

            with messages_locked(url), ThreadPoolExecutor(2) as pool:
                first = pool.submit(send)
                wait_until(lambda: statements_waiting_for_a_lock(url) == 1, 10, "the insert")
                queued = pool.submit(send).result(10)
                running = first.result(10)
            maybe = running.get_json()
            assert (running.status_code, queued.status_code) == (503, 503)
            assert "Retry-After" in running.headers and "Retry-After" in queued.headers
            assert "may have been accepted as " + maybe["message_id"] in maybe["detail"]
            assert "was not accepted" in queued.get_json()["detail"]
            # The lock is gone: the one that may have been accepted was; the other was not.
            wait_until(lambda: messages_of(runtime, tenant) == 1, 10, "the running one to commit")
            with app.test_client() as client:
                shown = client.get(f"/v1/messages/{maybe['message_id']}", headers=bearer(tenant))
            assert shown.status_code == 200
        finally:
            runtime.close()


def test_every_v1_operation_documents_the_503(client: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    unavailable = spec["components"]["responses"]["ServiceUnavailable"]
    assert unavailable["headers"]["Retry-After"]["required"]
    for path, operations in spec["paths"].items():
        if path.startswith("/v1/"):
            for method, operation in operations.items():
                if method != "parameters":
                    assert "503" in operation["responses"], f"{method.upper()} {path}"
