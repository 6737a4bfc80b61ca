"""Real `omnipush serve relay|dispatcher|worker` processes serve `GET /metrics`: a message pushed
through the pipeline moves their counters, and a metrics port already taken costs the metrics,
never the service."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from producer_api.api_keys import NewApp
from shared.runtime import Runtime
from tests.conftest import isolated_settings, new_tenant, service_env
from tests.scraped import Sample, key, scrape
from tests.stack import Service, Stack, free_port, wait_until

#: The services of the pipeline whose metrics these tests read.
WATCHED = ("relay", "dispatcher", "worker-web")


@dataclass
class Pipeline:
    """A stack without the gateway, each watched service serving metrics at its own URL."""

    stack: Stack
    tenant: NewApp
    #: Where each watched service serves its metrics (its OMNIPUSH_METRICS_BIND).
    binds: dict[str, str]

    def send(self) -> str:
        """Accept one web message for alice and wait until its delivery is sent."""
        headers = {"Authorization": f"Bearer {self.tenant.api_key}"}
        accepted = httpx.post(
            f"{self.stack.api_url}/v1/messages",
            json={"to": [{"user_id": "alice"}], "channels": ["web"], "content": {"title": "Hi"}},
            headers=headers,
            timeout=10,
        )
        assert accepted.status_code == 202, accepted.text
        message_id: str = accepted.json()["id"]

        def completed() -> bool:
            shown = httpx.get(f"{self.stack.api_url}/v1/messages/{message_id}", headers=headers)
            return bool(shown.json()["status"] == "completed")

        wait_until(completed, 30, f"message {message_id} to be completed")
        return message_id

    def url(self, service: str) -> str:
        return f"http://{self.binds[service]}/metrics"

    def scrape(self, service: str) -> dict[Sample, float]:
        return scrape(self.url(service))


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    with isolated_settings() as settings:
        stack = Stack(settings=settings, env=service_env(settings))
        binds = {name: f"127.0.0.1:{free_port()}" for name in WATCHED}
        try:
            for name in ("api", *WATCHED):
                stack.start(name, {"OMNIPUSH_METRICS_BIND": binds[name]} if name in binds else {})
            runtime = Runtime.build(settings)
            try:
                tenant = new_tenant(runtime)
            finally:
                runtime.close()
            yield Pipeline(stack, tenant, binds)
        finally:
            stack.stop_all()


def test_a_message_through_the_pipeline_moves_the_relay_dispatcher_and_worker_counters(
    pipeline: Pipeline,
) -> None:
    before = {name: pipeline.scrape(name) for name in WATCHED}
    pipeline.send()
    sent = key("omnipush_worker_deliveries_total", channel="web", outcome="sent")

    def grew(service: str, sample: Sample) -> float:
        return pipeline.scrape(service).get(sample, 0.0) - before[service].get(sample, 0.0)

    # The dispatcher sends web deliveries itself and counts them as the web worker would, just
    # after committing the batch, so the count may trail the status.
    wait_until(lambda: grew("dispatcher", sent) == 1, 10, "the send to be counted")
    assert grew("dispatcher", key("omnipush_worker_batch_size_count", channel="web")) == 1
    send_time = key("omnipush_worker_send_duration_seconds_count", channel="web")
    assert grew("dispatcher", send_time) == 1
    assert grew("worker-web", sent) == 0
    assert grew("relay", key("omnipush_relay_published_messages_total")) == 1
    assert grew("relay", key("omnipush_relay_lag_seconds_count")) == 1
    assert grew("relay", key("omnipush_relay_batch_size_count")) >= 1

    relay = pipeline.scrape("relay")
    # The relay confirmed the row well within a second of its acceptance.
    assert relay[key("omnipush_relay_lag_seconds_bucket", le="1.0")] >= 1
    assert relay[key("omnipush_broker_reconnects_total", service="relay")] == 0
    assert any(name == "process_resident_memory_bytes" for name, _ in relay)
    worker = pipeline.scrape("worker-web")
    assert worker[key("omnipush_redis_outages_total", service="worker-web")] == 0
    queued = key("omnipush_dispatcher_deliveries_total", channel="web", outcome="queued")
    assert grew("dispatcher", queued) == 1
    assert grew("dispatcher", key("omnipush_dispatcher_dispatched_messages_total")) == 1
    assert grew("dispatcher", key("omnipush_dispatcher_lag_seconds_count")) == 1
    dispatcher = pipeline.scrape("dispatcher")
    assert dispatcher[key("omnipush_broker_reconnects_total", service="dispatcher")] == 0


def test_a_relay_whose_metrics_port_is_taken_warns_once_and_relays_on(
    pipeline: Pipeline,
) -> None:
    stack = pipeline.stack
    stack.services["relay"].stop()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bind = f"127.0.0.1:{taken.getsockname()[1]}"
        second = Service(
            args=["serve", "relay"], env=stack.env | {"OMNIPUSH_METRICS_BIND": bind}
        ).start()
        try:
            second.wait_for_log("amqp.ready")
            pipeline.send()  # only this relay can have published it
            assert second.output().count("metrics.unavailable") == 1, second.output()
            assert f"cannot serve /metrics on {bind}" in second.output()
            assert second.working()
        finally:
            assert second.stop() == 0
            stack.start("relay", {"OMNIPUSH_METRICS_BIND": pipeline.binds["relay"]})
