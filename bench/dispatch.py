"""Dispatcher benchmark: `omnipush serve dispatcher` alone, with every policy stage on.

Each phase has its own PostgreSQL database and queue prefix (dropped and deleted afterwards,
Redis keys included). The app's users are registered with preferences and quiet hours that do
not apply to what is sent now, and its policy has content dedup and a notification cap high
enough never to throttle, so that every stage runs on every delivery and lets it through. The
messages are posted through the API (`POST /v1/messages/batch`) and relayed, exactly as in
production; only once all of them wait in the dispatch queue are the API and the relay stopped
and the dispatcher started, so that the figure is the dispatcher's alone: from its `amqp.ready`
to the last of its web deliveries in the channel queue (written, published and confirmed).

1. messages: N single-recipient messages (distinct content, so nothing is deduplicated), beside
   raw pika consuming the same number of messages of the same size from a quorum queue with
   manual acks, on the same broker in the same run (the median of three rounds); the target is
   a ratio of at least 0.3;
2. fan-out: one message to a topic of 100,000 subscribers (created with the store's bulk
   insert); deliveries per second, target 5,000;
3. lanes: the whole pipeline (API, relay, dispatcher, web worker, gateway) with 50,000 `low`
   marketing web deliveries waiting in the web channel's low lane when the web worker starts;
   while it works through them, a few `high` verification codes are POSTed one after another
   to a user with a connected Socket.IO client: POST to notification, p50 and max.

With `--py-spy PATH` each timed dispatcher is profiled; the collapsed stacks are written to
var/ and the functions most often on the stack are printed. Results are printed and written
to var/bench-dispatch.json.

    python -m bench.dispatch [--messages 20000] [--subscribers 100000] [--backlog 50000]
                             [--samples 5] [--py-spy PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pika
from sqlalchemy import func, insert, select, text

from bench import cpu
from bench.baseline import publish_confirmed
from bench.e2e import Receiver
from bench.profiling import Profiler
from bench.results import record
from producer_api.api_keys import NewApp, create_app_with_key
from shared.ids import utcnow
from shared.models import Delivery, Event, Subscription, Topic, User, table_of
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import WEB_SENDS_BY_WORKER, isolated_settings, service_env
from tests.stack import Service, Stack, wait_until

BATCH = 500
PREFETCH = 200  # the dispatcher's own (shared.amqp.link)
ZONE = "Europe/Berlin"
#: Dedup on, and caps no benchmark reaches: every delivery is checked and let through.
POLICY = {
    "dedup_window": {"notification": 300, "marketing": 300, "verification": 300},
    "frequency_cap": {
        "notification": {"limit": 1000, "window": 3600},
        "marketing": {"limit": 1000, "window": 3600},
    },
}
INFRASTRUCTURE = {"postgresql": "postgres", "rabbitmq": "beam.smp", "redis": "redis-server"}
TIMEOUT_SECONDS = 300.0
BASELINE_ROUNDS = 3


def user_rows(
    app_id: str, user_ids: Sequence[str], now: datetime, opted_out: str
) -> list[dict[str, Any]]:
    """Registered users whose preferences and quiet hours the stages read, neither of which
    applies to what a phase sends now: they opted out of the web channel for the category
    `opted_out` only, and their quiet hours begin six hours from now in their zone."""
    local = now.astimezone(ZoneInfo(ZONE))
    quiet = {
        "start": (local + timedelta(hours=6)).strftime("%H:%M"),
        "end": (local + timedelta(hours=8)).strftime("%H:%M"),
    }
    return [
        {
            "app_id": app_id,
            "user_id": user_id,
            "timezone": ZONE,
            "preferences": {opted_out: {"web": False}},
            "quiet_hours": quiet,
            "created_at": now,
            "updated_at": now,
        }
        for user_id in user_ids
    ]


def register_users(
    runtime: Runtime, app_id: str, user_ids: Sequence[str], opted_out: str = "marketing"
) -> None:
    with runtime.engine.begin() as connection:
        connection.execute(insert(table_of(User)), user_rows(app_id, user_ids, utcnow(), opted_out))


def create_topic(runtime: Runtime, app_id: str, key: str, user_ids: Sequence[str]) -> None:
    """A topic and its subscribers, with the store's bulk insert (the API takes 1,000 a call)."""
    now = utcnow()
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(table_of(Topic)), {"app_id": app_id, "key": key, "created_at": now}
        )
        connection.execute(
            insert(table_of(Subscription)),
            [
                {"app_id": app_id, "topic_key": key, "user_id": u, "created_at": now}
                for u in user_ids
            ],
        )


def analyze(runtime: Runtime) -> None:
    """Fresh planner statistics, as autovacuum would have them soon after a bulk load: without
    them the dispatcher's look-up of a page of users is planned for an empty table."""
    with runtime.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE users, subscriptions"))


class QueueWatch:
    """Queue depths read on one connection (a connection per look would load the broker)."""

    def __init__(self, amqp_url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.channel = self.connection.channel()

    def depth(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def peek(self, queue: str) -> bytes:
        """The body of the message at the head of `queue`, which stays there."""
        method, _properties, body = self.channel.basic_get(queue)
        assert method is not None and method.delivery_tag is not None, f"{queue} is empty"
        self.channel.basic_nack(method.delivery_tag, requeue=True)
        return bytes(body)

    def close(self) -> None:
        self.connection.close()


def consume_baseline(amqp_url: str, queue: str, body: bytes, count: int) -> float:
    """Raw pika: `count` messages of `body` consumed from a quorum queue with manual acks and
    the dispatcher's prefetch, per second (the queue is filled first and not timed)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    try:
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        publish_confirmed(amqp_url, queue, count, 1000, body)
        channel.basic_qos(prefetch_count=PREFETCH)
        started = time.monotonic()
        for taken, (method, _properties, _body) in enumerate(channel.consume(queue), start=1):
            assert method is not None and method.delivery_tag is not None
            channel.basic_ack(method.delivery_tag)
            if taken == count:
                break
        elapsed = time.monotonic() - started
        channel.cancel()
        return count / elapsed
    finally:
        channel.queue_delete(queue)
        connection.close()


def ready_at(service: Service) -> float:
    """When `service` said `amqp.ready`, in seconds since the epoch (from its JSON log)."""
    for line in service.lines:
        if "amqp.ready" in line:
            stamp = json.loads(line)["timestamp"]
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    raise AssertionError("no amqp.ready in the dispatcher's log")


@contextmanager
def private_stack(settings: Settings) -> Iterator[Stack]:
    """The services of a phase (started as needed), stopped whatever happens. Web deliveries
    go through the web worker's queue (`OMNIPUSH_WEB_SENDS=worker`): the dispatcher's figures
    are of what it writes and publishes, and the lanes are the web worker's."""
    env = service_env(settings) | WEB_SENDS_BY_WORKER
    stack = Stack(settings=settings, env=env, api_workers=2)
    try:
        yield stack
    finally:
        stack.stop_all()


class Tenant:
    """An app of a phase's store, and an API client with its key."""

    def __init__(self, runtime: Runtime, stack: Stack, name: str) -> None:
        with runtime.sessions() as session, session.begin():
            self.app: NewApp = create_app_with_key(session, name)
        self.http = httpx.Client(
            base_url=stack.api_url,
            headers={"Authorization": f"Bearer {self.app.api_key}"},
            timeout=120,
        )

    def put_policy(self) -> None:
        self.http.put("/v1/policy", json=POLICY).raise_for_status()

    def post(self, messages: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(messages), BATCH):
            answer = self.http.post(
                "/v1/messages/batch", json={"messages": list(messages[start : start + BATCH])}
            )
            answer.raise_for_status()
            refused = [r for r in answer.json()["results"] if r.get("status") != "accepted"]
            if refused:
                raise RuntimeError(f"the API refused messages: {refused[:3]}")

    def close(self) -> None:
        self.http.close()


def preload(
    stack: Stack,
    runtime: Runtime,
    watch: QueueWatch,
    name: str,
    prepare: Callable[[str], None],
    messages: list[dict[str, Any]],
) -> None:
    """Post `messages` through the API and relay, wait until all of them wait in the dispatch
    queue, then stop the API and the relay; `prepare(app_id)` fills the store first."""
    stack.start("api")
    stack.start("relay")
    tenant = Tenant(runtime, stack, name)
    try:
        prepare(tenant.app.app_id)
        tenant.put_policy()
        tenant.post(messages)
    finally:
        tenant.close()
    queue = runtime.topology.dispatch_queue
    wait_until(lambda: watch.depth(queue) >= len(messages), TIMEOUT_SECONDS, f"{queue} filled")
    for service in ("api", "relay"):
        stack.services.pop(service).stop()


def timed_dispatcher(
    stack: Stack,
    watch: QueueWatch,
    queue: str,
    count: int,
    profiler: Profiler | None,
    label: str,
) -> tuple[dict[str, Any], float]:
    """Start a dispatcher; seconds from its `amqp.ready` until `count` deliveries wait in
    `queue`, and the CPU it and the servers used meanwhile; and when it was ready (epoch)."""
    dispatcher = stack.start("dispatcher")
    assert dispatcher.process is not None
    started = ready_at(dispatcher)
    roots = {"dispatcher": dispatcher.process.pid}
    before = cpu.snapshot(roots, INFRASTRUCTURE, {})
    if profiler is not None:
        profiler.attach(dispatcher.process.pid, label)
    try:
        wait_until(
            lambda: watch.depth(queue) >= count,
            TIMEOUT_SECONDS,
            f"{count} in {queue}",
            interval=0.02,
        )
        finished = time.time()
        used = cpu.delta(before, cpu.snapshot(roots, INFRASTRUCTURE, {}))
    finally:
        profile = profiler.detach() if profiler is not None else {}
    stack.services.pop("dispatcher").stop()
    seconds = finished - started
    result = {
        "seconds": round(seconds, 3),
        "per_s": round(count / seconds, 1),
        "cpu_seconds": used,
        "dispatcher_cpu_ms_each": round(1000 * used["dispatcher"] / count, 3),
    }
    if profile:
        result["profile"] = profile
    return result, started


def delivery_statuses(runtime: Runtime) -> dict[str, int]:
    d = table_of(Delivery)
    with runtime.engine.connect() as connection:
        rows = connection.execute(select(d.c.status, func.count()).group_by(d.c.status)).all()
    return {status: count for status, count in rows}


def check_all_queued(runtime: Runtime, watch: QueueWatch, count: int) -> None:
    """What the figure stands for: every delivery written and let through, nothing left."""
    statuses = delivery_statuses(runtime)
    if statuses != {"queued": count}:
        raise RuntimeError(f"expected {count} queued deliveries, found {statuses}")
    left = watch.depth(runtime.topology.dispatch_queue)
    if left:
        raise RuntimeError(f"{left} dispatch messages were not acked")


def messages_phase(count: int, profiler: Profiler | None) -> dict[str, Any]:
    users = [f"user-{n:06d}" for n in range(count)]
    messages = [
        {
            "to": [{"user_id": user}],
            "channels": ["web"],
            "category": "notification",
            "content": {"title": f"Order {n} has shipped", "body": f"Parcel {n} is on its way."},
        }
        for n, user in enumerate(users)
    ]
    with isolated_settings() as settings, private_stack(settings) as stack:
        runtime = Runtime.build(settings)
        watch = QueueWatch(settings.amqp_url)
        try:

            def prepare(app_id: str) -> None:
                register_users(runtime, app_id, users)
                analyze(runtime)

            preload(stack, runtime, watch, "bench-dispatch", prepare, messages)
            body = watch.peek(runtime.topology.dispatch_queue)
            # A round takes about a second, so one neighbour's burst could make or break it.
            rounds = [
                consume_baseline(
                    settings.amqp_url, f"{settings.queue_prefix}.bench-baseline", body, count
                )
                for _round in range(BASELINE_ROUNDS)
            ]
            bare = statistics.median(rounds)
            queue = runtime.topology.channel_queue("web")
            dispatched, _ready = timed_dispatcher(stack, watch, queue, count, profiler, "messages")
            check_all_queued(runtime, watch, count)
        finally:
            watch.close()
            runtime.close()
    return {
        "messages": count,
        "message_bytes": len(body),
        "baseline_pika_consume_ack_per_s": round(bare, 1),
        "baseline_rounds_per_s": [round(r, 1) for r in rounds],
        "dispatcher": dispatched,
        "ratio": round(dispatched["per_s"] / bare, 3),
    }


def fan_out_phase(subscribers: int, profiler: Profiler | None) -> dict[str, Any]:
    users = [f"user-{n:06d}" for n in range(subscribers)]
    message = {
        "to": [{"topic": "everyone"}],
        "channels": ["web"],
        "category": "notification",
        "content": {"title": "We are open on Sunday", "body": "From 10 to 4."},
    }
    with isolated_settings() as settings, private_stack(settings) as stack:
        runtime = Runtime.build(settings)
        watch = QueueWatch(settings.amqp_url)
        try:

            def prepare(app_id: str) -> None:
                register_users(runtime, app_id, users)
                create_topic(runtime, app_id, "everyone", users)
                analyze(runtime)

            preload(stack, runtime, watch, "bench-fan-out", prepare, [message])
            queue = runtime.topology.channel_queue("web")
            dispatched, ready = timed_dispatcher(
                stack, watch, queue, subscribers, profiler, "fan-out"
            )
            check_all_queued(runtime, watch, subscribers)
            # The last page is written (and the message marked dispatched) before the rest of
            # its deliveries are published: how much of the time each part took.
            dispatched["written_after_s"] = round(written_at(runtime) - ready, 3)
        finally:
            watch.close()
            runtime.close()
    return {"subscribers": subscribers, "dispatcher": dispatched}


def written_at(runtime: Runtime) -> float:
    """When the message was marked dispatched (epoch seconds, from its trace)."""
    e = table_of(Event)
    with runtime.engine.connect() as connection:
        at = connection.execute(select(func.max(e.c.at)).where(e.c.stage == "dispatched")).scalar()
    assert at is not None
    return float(at.timestamp())


def lane_phase(backlog: int, samples: int) -> dict[str, Any]:
    """A `high` verification message POSTed while `backlog` low marketing web deliveries wait
    for the web worker: POST to the notification at a connected Socket.IO client."""
    users = [f"user-{n:06d}" for n in range(backlog)]
    blast = {
        "to": [{"topic": "everyone"}],
        "channels": ["web"],
        "category": "marketing",
        "priority": "low",
        "content": {"title": "Spring sale", "body": "Everything 20% off this week."},
    }
    with isolated_settings() as settings, private_stack(settings) as stack:
        runtime = Runtime.build(settings)
        watch = QueueWatch(settings.amqp_url)
        try:
            for service in ("api", "relay", "dispatcher", "gateway"):
                stack.start(service)
            tenant = Tenant(runtime, stack, "bench-lanes")
            try:
                register_users(runtime, tenant.app.app_id, [*users, "alice"], "notification")
                create_topic(runtime, tenant.app.app_id, "everyone", users)
                analyze(runtime)
                tenant.put_policy()
                tenant.post([blast])
                low = runtime.topology.channel_queue("web", "low")
                wait_until(lambda: watch.depth(low) >= backlog, TIMEOUT_SECONDS, f"{low} filled")
                receiver = Receiver(
                    stack.gateway_url, settings.secret_key, tenant.app.app_id, ["alice"]
                )
                try:
                    stack.start("worker-web")
                    measured = [
                        high_sample(tenant, receiver, watch, low, n) for n in range(samples)
                    ]
                finally:
                    receiver.close()
            finally:
                tenant.close()
        finally:
            watch.close()
            runtime.close()
    latencies = sorted(sample["ms"] for sample in measured)
    return {
        "low_backlog": backlog,
        "samples": measured,
        "p50_ms": round(statistics.median(latencies), 1),
        "max_ms": round(latencies[-1], 1),
    }


def high_sample(
    tenant: Tenant, receiver: Receiver, watch: QueueWatch, low: str, n: int
) -> dict[str, Any]:
    """One `high` verification code to alice: milliseconds from its POST to its arrival, and
    how many low deliveries still waited then (the backlog it went past)."""
    time.sleep(0.5)  # spacing the samples, so that each finds the worker busy with low ones
    waiting = watch.depth(low)
    sent_at = time.monotonic()
    answer = tenant.http.post(
        "/v1/messages",
        json={
            "to": [{"user_id": "alice"}],
            "channels": ["web"],
            "category": "verification",
            "priority": "high",
            "content": {"title": "Your code", "body": f"{n:06d} is your sign-in code."},
        },
    )
    answer.raise_for_status()
    message_id = answer.json()["id"]
    wait_until(lambda: message_id in receiver.arrivals, 60, f"{message_id} at the client")
    return {
        "ms": round((receiver.arrivals[message_id] - sent_at) * 1000, 1),
        "low_waiting_before": waiting,
        "low_waiting_after": watch.depth(low),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="single-recipient messages")
    parser.add_argument("--subscribers", type=int, default=100_000, help="topic fan-out")
    parser.add_argument("--backlog", type=int, default=50_000, help="low deliveries queued")
    parser.add_argument("--samples", type=int, default=5, help="high messages timed")
    parser.add_argument("--py-spy", metavar="PATH", help="profile each timed dispatcher")
    args = parser.parse_args()
    profiler = Profiler(args.py_spy, "dispatch") if args.py_spy else None
    result = {
        "messages": messages_phase(args.messages, profiler),
        "fan_out": fan_out_phase(args.subscribers, profiler),
        "lanes": lane_phase(args.backlog, args.samples),
    }
    record("dispatch", result)
    single, fan_out, lanes = result["messages"], result["fan_out"], result["lanes"]
    print(
        f"\nmessages: {single['dispatcher']['per_s']:.0f}/s through the dispatcher, raw pika "
        f"consume+ack {single['baseline_pika_consume_ack_per_s']:.0f}/s, "
        f"ratio {single['ratio']:.3f} (target 0.3)\n"
        f"fan-out: {fan_out['dispatcher']['per_s']:.0f} deliveries/s to a topic of "
        f"{fan_out['subscribers']} (target 5000)\n"
        f"lanes: a high message behind {lanes['low_backlog']} low web deliveries reached its "
        f"Socket.IO client in p50 {lanes['p50_ms']} ms, max {lanes['max_ms']} ms "
        f"({len(lanes['samples'])} samples)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
