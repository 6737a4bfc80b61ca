"""Prometheus metrics of the services that answer no HTTP: relay, dispatcher, workers, callbacks.

Each group of metrics is a small class that registers its families on the `CollectorRegistry`
it is given (a process serves one registry, see `shared.metrics_endpoint`), or on a registry of
its own that nobody serves when given none, so tests and tools can build as many as they like.
Labels are few and bounded: `service`, `channel` and `outcome`; never an app, user or message
id. An outcome a caller names that is not in the group's list is counted as `other`, so that a
new status cannot crash a batch or grow the label set unnoticed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

#: The delivery statuses the dispatcher decides when it writes a delivery.
DISPATCH_OUTCOMES = (
    "queued",
    "deferred",
    "suppressed",
    "deduplicated",
    "throttled",
    "canceled",
    "failed",
)
#: How a channel worker's attempt at a delivery ended.
WORKER_OUTCOMES = ("sent", "retrying", "failed", "expired", "deferred")
#: How one POST of a status callback ended.
CALLBACK_OUTCOMES = ("sent", "retrying", "failed")
OTHER = "other"

#: Messages or deliveries handled together, from a lone one to the largest relay batch.
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
#: Seconds a message waited: milliseconds when all is well, minutes when a service was down.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
#: Seconds a channel took to send one batch to its provider.
SEND_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _known(outcome: str, known: Sequence[str]) -> str:
    return outcome if outcome in known else OTHER


def _observe_all(histogram: Histogram, values: Iterable[float]) -> None:
    for value in values:
        histogram.observe(max(value, 0.0))  # a clock step back must not make a negative bucket


class RelayMetrics:
    """What the outbox relay publishes, in what batches, and how long rows waited for it."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.published = Counter(
            "omnipush_relay_published_messages_total",
            "Outbox rows (messages to dispatch and fallback deliveries) the broker confirmed.",
            registry=registry,
        )
        self.batch_size = Histogram(
            "omnipush_relay_batch_size",
            "Outbox rows claimed per relay batch.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.lag = Histogram(
            "omnipush_relay_lag_seconds",
            "Seconds from when a row was due (its message accepted, or its send_at) to the "
            "broker's confirm of its publish.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )

    def observe_batch(self, size: int, lags: Sequence[float]) -> None:
        """A batch of `size` claimed rows, of which those in `lags` were confirmed."""
        self.batch_size.observe(size)
        self.published.inc(len(lags))
        _observe_all(self.lag, lags)


class DispatchMetrics:
    """What the dispatcher dispatches: messages, the deliveries it decides, and its lag."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.dispatched = Counter(
            "omnipush_dispatcher_dispatched_messages_total",
            "Messages the dispatcher expanded into deliveries.",
            registry=registry,
        )
        self.deliveries = Counter(
            "omnipush_dispatcher_deliveries_total",
            "Deliveries the dispatcher wrote, by channel and the status it gave them "
            f"({', '.join(DISPATCH_OUTCOMES)}).",
            ["channel", "outcome"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "omnipush_dispatcher_batch_size",
            "Messages per dispatcher batch.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.lag = Histogram(
            "omnipush_dispatcher_lag_seconds",
            "Seconds from when a message was due (accepted, or its send_at) to its dispatch.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )

    def observe_batch(
        self, size: int, outcomes: Mapping[tuple[str, str], int], lags: Sequence[float]
    ) -> None:
        """A batch of `size` messages; `outcomes` counts the deliveries written by (channel,
        outcome); `lags` holds one value per message dispatched."""
        self.batch_size.observe(size)
        self.dispatched.inc(len(lags))
        _observe_all(self.lag, lags)
        for (channel, outcome), count in outcomes.items():
            if count:
                self.deliveries.labels(channel, _known(outcome, DISPATCH_OUTCOMES)).inc(count)


class WorkerMetrics:
    """How a channel worker's deliveries end, in what batches, and how long sending takes."""

    def __init__(self, channel: str, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.channel = channel
        self.deliveries = Counter(
            "omnipush_worker_deliveries_total",
            f"Delivery attempts by channel and outcome ({', '.join(WORKER_OUTCOMES)}).",
            ["channel", "outcome"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "omnipush_worker_batch_size",
            "Deliveries per worker batch, by channel.",
            ["channel"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.send_duration = Histogram(
            "omnipush_worker_send_duration_seconds",
            "Seconds the channel took to send one batch, by channel.",
            ["channel"],
            buckets=SEND_BUCKETS,
            registry=registry,
        )

    def observe_batch(self, size: int, outcomes: Mapping[str, int], send_seconds: float) -> None:
        """A batch of `size` AMQP messages whose deliveries ended as `outcomes` counts."""
        self.batch_size.labels(self.channel).observe(size)
        self.send_duration.labels(self.channel).observe(max(send_seconds, 0.0))
        for outcome, count in outcomes.items():
            if count:
                self.deliveries.labels(self.channel, _known(outcome, WORKER_OUTCOMES)).inc(count)


class CallbackMetrics:
    """How the callbacks sender's POSTs end."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.callbacks = Counter(
            "omnipush_callbacks_total",
            f"Status callback POSTs by outcome ({', '.join(CALLBACK_OUTCOMES)}).",
            ["outcome"],
            registry=registry,
        )

    def observe_batch(self, outcomes: Mapping[str, int]) -> None:
        for outcome, count in outcomes.items():
            if count:
                self.callbacks.labels(_known(outcome, CALLBACK_OUTCOMES)).inc(count)


class ConnectionMetrics:
    """How often a process lost RabbitMQ or Redis and got it back, labelled by its service."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        labels = ["service"]
        self._broker_reconnects = Counter(
            "omnipush_broker_reconnects_total",
            "Times the connection to RabbitMQ was ready again after it had been lost.",
            labels,
            registry=registry,
        ).labels(service)
        self._redis_outages = Counter(
            "omnipush_redis_outages_total",
            "Times Redis stopped answering a process that needed it.",
            labels,
            registry=registry,
        ).labels(service)
        self._redis_reconnects = Counter(
            "omnipush_redis_reconnects_total",
            "Times Redis answered again after an outage.",
            labels,
            registry=registry,
        ).labels(service)

    def broker_reconnected(self) -> None:
        self._broker_reconnects.inc()

    def redis_lost(self) -> None:
        self._redis_outages.inc()

    def redis_back(self) -> None:
        self._redis_reconnects.inc()
