"""`GET /metrics` counts requests by method, route and status, times them, and counts accepted
messages, whichever way through the API a request went."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from producer_api.api_keys import NewApp
from shared.runtime import Runtime
from tests.conftest import bearer

PLAIN = {"to": [{"user_id": "alice"}], "channels": ["web"], "content": {"title": "Hi"}}


Sample = tuple[str, frozenset[tuple[str, str]]]


def scrape(client: FlaskClient) -> dict[Sample, float]:
    """Every sample of `GET /metrics` by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def requests(method: str, route: str, status: int) -> Sample:
    labels = {"method": method, "route": route, "status": str(status)}
    return "omnipush_http_requests_total", frozenset(labels.items())


def timed(method: str, route: str) -> Sample:
    labels = {"method": method, "route": route}
    return "omnipush_http_request_duration_seconds_count", frozenset(labels.items())


ACCEPTED: Sample = ("omnipush_api_accepted_messages_total", frozenset())


def test_metrics_count_requests_by_route_and_status_and_accepted_messages(
    client: FlaskClient, tenant: NewApp, runtime: Runtime
) -> None:
    before = scrape(client)
    sent: list[Any] = [
        # Two plain messages (the fast path), one with an Idempotency-Key (the Flask view) and
        # its replay, a batch of two, a message without a key.
        client.post("/v1/messages", json=PLAIN, headers=bearer(tenant)),
        client.post("/v1/messages", json=PLAIN, headers=bearer(tenant)),
        client.post("/v1/messages", json=PLAIN, headers=bearer(tenant) | {"Idempotency-Key": "m"}),
        client.post("/v1/messages", json=PLAIN, headers=bearer(tenant) | {"Idempotency-Key": "m"}),
        client.post(
            "/v1/messages/batch", json={"messages": [PLAIN, PLAIN]}, headers=bearer(tenant)
        ),
        client.post("/v1/messages", json=PLAIN),
    ]
    assert [r.status_code for r in sent] == [202, 202, 202, 202, 200, 401]
    message_id = sent[0].get_json()["id"]
    assert client.get(f"/v1/messages/{message_id}", headers=bearer(tenant)).status_code == 200
    assert client.get("/v1/messages/msg_nope", headers=bearer(tenant)).status_code == 404
    assert client.get(f"/v1/nothing/{message_id}", headers=bearer(tenant)).status_code == 404
    after = scrape(client)

    def grew(key: Sample) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew(requests("POST", "/v1/messages", 202)) == 4
    assert grew(requests("POST", "/v1/messages", 401)) == 1
    assert grew(requests("POST", "/v1/messages/batch", 200)) == 1
    # The URL rule, never the id: one series for every message.
    assert grew(requests("GET", "/v1/messages/<string:message_id>", 200)) == 1
    assert grew(requests("GET", "/v1/messages/<string:message_id>", 404)) == 1
    assert grew(requests("GET", "<unmatched>", 404)) == 1
    assert not any(message_id in str(labels) for _name, labels in after)
    assert grew(timed("POST", "/v1/messages")) == 5
    assert grew(timed("POST", "/v1/messages/batch")) == 1
    # Two fast, one through the view and two in the batch; the replay accepted nothing.
    assert grew(ACCEPTED) == 5


def test_the_gateway_counts_its_requests_the_same_way(runtime: Runtime) -> None:
    from ws_gateway.app import create_app

    gateway = create_app(runtime=runtime).test_client()
    before = scrape(gateway)
    assert gateway.get("/v1/inbox").status_code == 401
    after = scrape(gateway)
    key = requests("GET", "/v1/inbox", 401)
    assert after.get(key, 0.0) - before.get(key, 0.0) == 1
