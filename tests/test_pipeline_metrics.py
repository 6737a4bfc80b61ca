"""The metric groups of the services without HTTP, their `/metrics` endpoint and where it binds,
and the reconnect counters of the broker link and the Redis clients."""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from shared.amqp.link import AmqpLink
from shared.amqp.topology import Topology
from shared.best_effort_redis import BestEffortRedis
from shared.metrics_endpoint import process_registry, serving_metrics
from shared.pipeline_metrics import (
    CallbackMetrics,
    ConnectionMetrics,
    DispatchMetrics,
    RelayMetrics,
    WorkerMetrics,
)
from shared.readiness import wait_for_redis
from shared.settings import Settings, default_metrics_port
from tests.conftest import amqp_url_via, queue_prefix
from tests.fault_proxy import FaultProxy
from tests.scraped import key, scrape
from tests.stack import free_port, wait_until


def with_bind(bind: str) -> Settings:
    """Settings read from an environment whose only other variable is a good secret key."""
    return Settings.from_env(
        {"OMNIPUSH_METRICS_BIND": bind, "OMNIPUSH_SECRET_KEY": secrets.token_urlsafe(48)}
    )


def every_group(registry: CollectorRegistry) -> None:
    RelayMetrics(registry)
    DispatchMetrics(registry)
    WorkerMetrics("web", registry)
    CallbackMetrics(registry)
    ConnectionMetrics("relay", registry)


def test_two_processes_worth_of_metric_groups_do_not_collide() -> None:
    first, second = process_registry(), process_registry()
    every_group(first)
    every_group(second)
    with pytest.raises(ValueError, match="Duplicated"):
        RelayMetrics(first)  # one registry still refuses the same family twice


def test_dispatch_metrics_count_a_batch_by_channel_and_outcome_over_http() -> None:
    registry = process_registry()
    metrics = DispatchMetrics(registry)
    metrics.observe_batch(
        3,
        {("web", "queued"): 4, ("email", "suppressed"): 1, ("sms", "no-such-status"): 2},
        [0.02, 0.3, 7.0],
    )
    metrics.observe_batch(1, {("web", "queued"): 1, ("web", "throttled"): 0}, [0.01])
    with serving_metrics(registry, ("127.0.0.1", free_port()), "dispatcher") as bound:
        assert bound is not None
        samples = scrape(f"http://{bound[0]}:{bound[1]}/metrics")
    deliveries = "omnipush_dispatcher_deliveries_total"
    assert samples[key(deliveries, channel="web", outcome="queued")] == 5
    assert samples[key(deliveries, channel="email", outcome="suppressed")] == 1
    # An outcome the dispatcher should not have named is counted, under a bounded label.
    assert samples[key(deliveries, channel="sms", outcome="other")] == 2
    assert key(deliveries, channel="web", outcome="throttled") not in samples
    assert samples[key("omnipush_dispatcher_dispatched_messages_total")] == 4
    assert samples[key("omnipush_dispatcher_batch_size_count")] == 2
    assert samples[key("omnipush_dispatcher_batch_size_sum")] == 4
    assert samples[key("omnipush_dispatcher_lag_seconds_count")] == 4
    assert samples[key("omnipush_dispatcher_lag_seconds_bucket", le="0.05")] == 2
    assert samples[key("omnipush_dispatcher_lag_seconds_bucket", le="5.0")] == 3
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)


def test_a_metrics_port_in_use_is_one_warning_and_no_endpoint() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            capture_logs() as logs,
            serving_metrics(process_registry(), ("127.0.0.1", port), "dispatcher") as bound,
        ):
            assert bound is None
    (warning,) = [line for line in logs if line["log_level"] == "warning"]
    assert warning["event"] == "metrics.unavailable"
    assert f"127.0.0.1:{port}" in warning["detail"]
    assert "dispatcher runs on without metrics" in warning["detail"]


def test_metrics_off_serves_nothing() -> None:
    assert with_bind("off").metrics_address(9101) is None
    assert with_bind("OFF").metrics_address(9101) is None
    with serving_metrics(process_registry(), None, "relay") as bound:
        assert bound is None


def test_each_service_has_a_default_port_and_the_setting_overrides_it() -> None:
    assert Settings().metrics_address(default_metrics_port("relay")) == ("127.0.0.1", 9101)
    assert default_metrics_port("dispatcher") == 9102
    assert default_metrics_port("callbacks") == 9103
    assert default_metrics_port("worker", 4) == 9114
    assert with_bind("").metrics_address(9103) == ("127.0.0.1", 9103)
    assert with_bind("0.0.0.0:9200").metrics_address(9101) == ("0.0.0.0", 9200)
    assert with_bind("[::1]:9200").metrics_address(9101) == ("::1", 9200)


@pytest.mark.parametrize("bad", ["9101", "localhost", "host:port", ":9101", "h:0", "h:70000"])
def test_a_bad_metrics_bind_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(RuntimeError, match="OMNIPUSH_METRICS_BIND must be host:port"):
        with_bind(bad)


def test_worker_and_callback_metrics_keep_their_labels_bounded() -> None:
    registry = CollectorRegistry()
    worker = WorkerMetrics("email", registry)
    callbacks = CallbackMetrics(registry)
    worker.observe_batch(3, {"sent": 2, "retrying": 1, "sending": 1}, 0.2)
    callbacks.observe_batch({"sent": 1, "failed": 2})
    value = registry.get_sample_value
    assert value("omnipush_worker_deliveries_total", {"channel": "email", "outcome": "sent"}) == 2
    assert value("omnipush_worker_deliveries_total", {"channel": "email", "outcome": "other"}) == 1
    assert value("omnipush_worker_send_duration_seconds_sum", {"channel": "email"}) == 0.2
    assert value("omnipush_callbacks_total", {"outcome": "failed"}) == 2


def reconnects(registry: CollectorRegistry, name: str, service: str) -> float:
    return registry.get_sample_value(name, {"service": service}) or 0.0


@pytest.fixture
def topology() -> Iterator[Topology]:
    with queue_prefix() as prefix:
        yield Topology(prefix=prefix, channels=("web",))


def test_a_broker_link_counts_each_time_it_is_ready_again(
    broker_proxy: FaultProxy, topology: Topology
) -> None:
    registry = CollectorRegistry()
    link = AmqpLink(
        amqp_url_via(broker_proxy), topology, connections=ConnectionMetrics("relay", registry)
    )
    link.start()
    try:
        assert link.wait_ready(10)
        assert reconnects(registry, "omnipush_broker_reconnects_total", "relay") == 0
        broker_proxy.drop()
        wait_until(lambda: not link.ready.is_set(), 10, "the link to see its connection lost")
        assert link.wait_ready(15), "the link never reconnected"
        assert reconnects(registry, "omnipush_broker_reconnects_total", "relay") == 1
    finally:
        link.close()


def test_best_effort_redis_counts_an_outage_and_its_end() -> None:
    registry = CollectorRegistry()
    with FaultProxy("127.0.0.1", 6379) as proxy:
        best_effort = BestEffortRedis(
            f"redis://{proxy.address}/0",
            cool_down=0.05,
            connections=ConnectionMetrics("api", registry),
        )
        try:
            assert best_effort.call("a test", lambda client: client.ping(), False) is True
            proxy.refuse()
            proxy.drop()
            assert best_effort.call("a test", lambda client: client.ping(), False) is False
            assert reconnects(registry, "omnipush_redis_outages_total", "api") == 1
            proxy.resume()
            wait_until(
                lambda: best_effort.call("a test", lambda client: client.ping(), False),
                5,
                "Redis to answer again",
            )
            assert reconnects(registry, "omnipush_redis_reconnects_total", "api") == 1
            assert reconnects(registry, "omnipush_redis_outages_total", "api") == 1
        finally:
            best_effort.close()


def test_waiting_for_redis_counts_one_outage_and_one_reconnect() -> None:
    registry = CollectorRegistry()
    connections = ConnectionMetrics("worker-web", registry)
    with FaultProxy("127.0.0.1", 6379) as proxy:
        proxy.refuse()
        client = redis.Redis.from_url(f"redis://{proxy.address}/0", socket_timeout=1)
        answered: list[bool] = []
        waiter = threading.Thread(
            target=lambda: answered.append(
                wait_for_redis(client, threading.Event(), 0.1, connections=connections)
            )
        )
        waiter.start()
        wait_until(
            lambda: reconnects(registry, "omnipush_redis_outages_total", "worker-web"),
            5,
            "the outage to be counted",
        )
        proxy.resume()
        waiter.join(10)
        client.close()
    assert answered == [True]
    assert reconnects(registry, "omnipush_redis_outages_total", "worker-web") == 1
    assert reconnects(registry, "omnipush_redis_reconnects_total", "worker-web") == 1
