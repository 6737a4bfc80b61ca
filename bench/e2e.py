"""End-to-end benchmark: POST /v1/messages to Socket.IO clients, through the whole stack.

It starts a private stack (its own PostgreSQL database and queue prefix, free ports), connects
one Socket.IO client per user, and measures

1. throughput: messages fanned out to every user, posted as fast as the API takes them;
   deliveries per second from the first POST to the last notification received, beside raw
   pika (asynchronous confirms plus a consumer with acks) on the same broker;
2. paced latency: single-recipient messages posted at a fixed rate; POST-to-receipt p50 and
   p99, and the CPU per message over every process of the pipeline and its services;
3. lone latency: one message at a time at idle, to a user whose socket is the official
   socket.io-client's (Node.js, `tests/socket_crowd.js`); POST-to-receipt p50 and p99;
4. closed loop: wrk posting single-recipient messages (each its own content) as fast as the API
   answers, for a fixed time; messages per second from the first POST until the last of them
   reached its socket, beside wrk against `bench.hello_app` (bare Flask "hello") under the
   same gunicorn settings; before that, the same load generator POSTs to hello at the paced
   phase's rate, and hello's CPU per request stands beside the pipeline's CPU per message;
5. topic fan-out: N official socket.io-client sockets (default 10,000) connected to the
   stack's gateway, each a subscriber of one topic; seconds from POSTing a message to the
   topic until every socket has it, beside `bench.bare_gateway` emitting to the same number of
   sockets (`bench.gateway.bare`); and the gateway's memory per idle socket beside bare
   Flask-SocketIO's.

The load generators (the message poster, wrk) and the sockets run in processes of their own,
counted apart. With `--py-spy PATH` every service is profiled through the paced phase and the
topic messages (which then cost more CPU: py-spy's samples), and the result says where each
one's samples went.
The run ends with one table of the live path's targets, each figure beside its baseline from
the same run. Run it with `make bench`; results also go to var/bench-e2e.json.

    python -m bench.e2e [--sockets 10000] [--closed-seconds 10] [--lone 50] [--py-spy PATH] ...
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import socketio
from sqlalchemy import select

from bench import cpu
from bench.api import WRK_MISSING, Server, answered, hello_server, measure, run_wrk
from bench.baseline import run_baseline
from bench.gateway import bare, memory_per_socket, ratios_to_bare, rounds_of
from bench.load import post_hello, post_messages
from bench.profiling import Profiler
from bench.results import record
from producer_api.api_keys import NewApp, create_app_with_key
from producer_api.topics import MAX_SUBSCRIBE
from shared.models import Event
from shared.runtime import Runtime
from shared.settings import Settings
from shared.tokens import mint_browser_token
from tests.conftest import isolated_settings, service_env
from tests.gateway_support import token_for
from tests.socket_crowd import socket_crowd
from tests.stack import Stack, wait_until

TIMEOUT_SECONDS = 300.0
#: Rounds of wrk against bare hello in the closed loop, of which the median counts.
HELLO_ROUNDS = 3

#: What a closed loop's wrk posts: bench.wrk_report fills in {n} and {user} for each request.
CLOSED_LOOP_MESSAGE = {
    "to": [{"user_id": "bench-{user}"}],
    "channels": ["web"],
    "content": {"title": "closed loop {n}"},
}
#: The clients' processes, counted apart from the pipeline's CPU.
CLIENTS = ("bench load generator", "bench receivers", "wrk")


class Receiver:
    """Socket.IO clients for many users, recording when each notification arrived."""

    def __init__(self, gateway_url: str, secret: str, app_id: str, users: list[str]) -> None:
        self.arrivals: dict[str, float] = {}
        self.count = 0
        self.last_arrival = 0.0
        self._lock = threading.Lock()
        self.clients = []
        for user in users:
            token, _ = mint_browser_token(secret, app_id, user, 3600)
            client = socketio.Client(reconnection=False)
            client.on("notification", self._on_notification)
            client.connect(gateway_url, auth={"token": token}, transports=["websocket"])
            self.clients.append(client)

    def _on_notification(self, data: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            self.count += 1
            self.last_arrival = now
            self.arrivals.setdefault(data["message_id"], now)

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()


class Load:
    """Runs the load generator in its own process and remembers that process for CPU counts."""

    def __init__(self, stack: Stack, api_key: str) -> None:
        self.stack = stack
        self.api_key = api_key
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
        self.pid = self.pool.submit(os.getpid).result()

    def post(
        self, recipients: list[list[str]], rate: float | None, threads: int
    ) -> list[tuple[str, float]]:
        _pid, sent = self.pool.submit(
            post_messages, self.stack.api_url, self.api_key, recipients, rate, threads
        ).result()
        return sent

    def post_hello(self, url: str, count: int, rate: float, threads: int) -> None:
        self.pool.submit(post_hello, url, count, rate, threads).result()

    def close(self) -> None:
        self.pool.shutdown()


def throughput(load: Load, receiver: Receiver, users: list[str], messages: int) -> dict[str, Any]:
    expected = receiver.count + messages * len(users)
    started = time.monotonic()
    load.post([users] * messages, rate=None, threads=8)
    posted = time.monotonic() - started
    wait_until(lambda: receiver.count >= expected, 300, "every delivery", interval=0.01)
    elapsed = time.monotonic() - started
    deliveries = messages * len(users)
    return {
        "messages": messages,
        "recipients_per_message": len(users),
        "deliveries": deliveries,
        "seconds": round(elapsed, 3),
        "deliveries_per_s": round(deliveries / elapsed, 1),
        "accepted_messages_per_s": round(messages / posted, 1),
    }


def latency(
    load: Load, receiver: Receiver, users: list[str], rate: float, seconds: float
) -> dict[str, Any]:
    total = int(rate * seconds)
    started = time.monotonic()
    sent = load.post([[users[n % len(users)]] for n in range(total)], rate=rate, threads=16)
    achieved = total / (time.monotonic() - started)
    wait_until(lambda: all(m in receiver.arrivals for m, _t in sent), 120, "every sample")
    samples = sorted((receiver.arrivals[m] - t) * 1000 for m, t in sent)
    return {
        "message_ids": [m for m, _t in sent],
        "target_rate": rate,
        "achieved_rate": round(achieved, 1),
        "samples": len(samples),
        "p50_ms": round(statistics.median(samples), 1),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 1),
        "max_ms": round(samples[-1], 1),
    }


def paced_hello(load: Load, hello: Server, rate: float, seconds: float) -> dict[str, Any]:
    """Bare hello under the API's gunicorn settings, POSTed to at the paced phase's rate by the
    same load generator: its CPU per request, the floor of what the API's share can be at that
    rate on this machine now (at 200/s each request finds the server idle and pays its wake-up)."""
    url = hello.url + "/"
    load.post_hello(url, int(rate), rate * 5, threads=16)  # warm-up
    requests = int(rate * seconds)
    before = cpu.snapshot({"hello": hello.process.pid}, {}, {})
    started = time.monotonic()
    load.post_hello(url, requests, rate, threads=16)
    achieved = requests / (time.monotonic() - started)
    used = cpu.delta(before, cpu.snapshot({"hello": hello.process.pid}, {}, {}))
    return {
        "target_rate": rate,
        "achieved_rate": round(achieved, 1),
        "requests": requests,
        "cpu_seconds": used["hello"],
        "cpu_ms_per_request": round(1000 * used["hello"] / requests, 2),
    }


def lone_latency(stack: Stack, api_key: str, token: str, user: str, samples: int) -> dict[str, Any]:
    """One message at a time, each after the last arrived and a pause, to the one socket of
    `user`: milliseconds from just before the POST to the notification in the browser."""
    address = urlsplit(stack.api_url)
    connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port)
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    run = uuid.uuid4().hex[:8]
    times: list[float] = []
    message_ids: list[str] = []
    with socket_crowd() as crowd:
        assert crowd.open(stack.gateway_url, [token], reconnect=False, timeout=30) == 1
        for n in range(samples):
            time.sleep(0.2)  # idle between samples, as a lone message finds the stack
            crowd.send({"op": "wait", "received": n + 1, "timeout_ms": 10_000})
            content = {"title": f"lone {run} {n}"}
            body = {"to": [{"user_id": user}], "channels": ["web"], "content": content}
            connection.request("POST", "/v1/messages", json.dumps(body), headers)
            response = connection.getresponse()
            accepted = json.loads(response.read())
            assert response.status == 202, response.status
            message_ids.append(accepted["id"])
            answer = crowd.answer()
            assert answer["done"] == 1, "the lone message never arrived"
            times.append(float(answer["last_ms"]))
    connection.close()
    times.sort()
    return {
        "samples": samples,
        "p50_ms": round(statistics.median(times), 1),
        "p99_ms": round(times[max(0, int(len(times) * 0.99) - 1)], 1),
        "max_ms": round(times[-1], 1),
        "message_ids": message_ids,
    }


def stage_latencies(runtime: Runtime, message_ids: list[str]) -> dict[str, float]:
    """Median milliseconds from `accepted` to each later stage, from the store's trace."""
    offsets: dict[str, list[float]] = {}
    with runtime.sessions() as session:
        rows = session.execute(
            select(Event.message_id, Event.stage, Event.at)
            .where(Event.message_id.in_(message_ids))
            .order_by(Event.id)
        ).all()
    accepted = {m: at for m, stage, at in rows if stage == "accepted"}
    for message_id, stage, at in rows:
        if stage != "accepted" and message_id in accepted:
            delay = (at - accepted[message_id]).total_seconds() * 1000
            offsets.setdefault(stage, []).append(delay)
    return {stage: round(statistics.median(v), 1) for stage, v in offsets.items()}


def cpu_snapshot(stack: Stack, load: Load | None) -> dict[str, float]:
    roots = {name: s.process.pid for name, s in stack.services.items() if s.process is not None}
    if load is not None:
        roots["bench load generator"] = load.pid
    infrastructure = {"postgresql": "postgres", "rabbitmq": "beam.smp", "redis": "redis-server"}
    return cpu.snapshot(roots, infrastructure, alone={"bench receivers": os.getpid()})


def pipeline_cpu_ms(used: dict[str, float], messages: int) -> float:
    """Milliseconds of CPU a message over the pipeline's processes and its services (PostgreSQL,
    RabbitMQ, Redis), the clients apart."""
    total = sum(seconds for label, seconds in used.items() if label not in CLIENTS)
    return round(1000 * total / messages, 2) if messages else 0.0


def closed_loop(
    stack: Stack,
    load: Load,
    receiver: Receiver,
    hello: Server,
    api_key: str,
    users: int,
    seconds: float,
    connections: int,
) -> dict[str, Any]:
    """wrk against bare hello, then against the API with messages to `users` connected users,
    each its own content; end to end, until the last of them reached its socket."""
    with tempfile.TemporaryDirectory() as directory:
        body = Path(directory) / "message.json"
        body.write_text(json.dumps(CLOSED_LOOP_MESSAGE))
        wrk: dict[str, Any] = {
            "method": "POST",
            "body": body,
            "seconds": seconds,
            "connections": connections,
        }
        # A warm-up first, as the API had the phases before this one.
        run_wrk(hello.url + "/", authorization=None, threads=1, **{**wrk, "seconds": 2})
        # Its rate has swung between runs (about 3,000 and 8,000/s seen): the median of three
        # rounds, each with how many cores were busy just before it (the neighbours' share).
        hello_rounds = [
            measure(hello, "/", expect=None, authorization=None, threads=1, **wrk)
            for _ in range(HELLO_ROUNDS)
        ]
        hello_per_s = statistics.median(r["accepted_per_s"] for r in hello_rounds)
        count_before = receiver.count
        cpu_before = cpu_snapshot(stack, load)
        started = time.monotonic()
        report = run_wrk(
            stack.api_url + "/v1/messages",
            authorization=f"Bearer {api_key}",
            threads=1,
            unique_users=users,
            **wrk,
        )
        accepted = answered(report, expect=202)
        wait_until(
            lambda: receiver.count >= count_before + accepted,
            TIMEOUT_SECONDS,
            "every closed-loop message at its socket",
            interval=0.01,
        )
        elapsed = receiver.last_arrival - started
        used = cpu.delta(cpu_before, cpu_snapshot(stack, load))
    used["wrk"] = round(report["wrk_cpu_seconds"], 2)
    end_to_end = accepted / elapsed
    return {
        "connections": connections,
        "seconds": seconds,
        "hello_per_s": round(hello_per_s, 1),
        "hello_rounds_per_s": [r["accepted_per_s"] for r in hello_rounds],
        "busy_cores_before_each_hello_round": [
            r["idle_machine_busy_cores_before"] for r in hello_rounds
        ],
        "accepted": accepted,
        "statuses": report["statuses"],
        "accepted_per_s": round(accepted / (report["duration_us"] / 1e6), 1),
        "end_to_end_messages_per_s": round(end_to_end, 1),
        "ratio_to_hello": round(end_to_end / hello_per_s, 3),
        "cpu_seconds": used,
        "cpu_ms_per_message": pipeline_cpu_ms(used, accepted),
    }


def topic_fan_out(
    stack: Stack,
    settings: Settings,
    tenant: NewApp,
    sockets: int,
    rounds: int,
    py_spy: str | None,
) -> dict[str, Any]:
    """`sockets` users subscribed to one topic, each with a socket of the crowd: the gateway's
    memory per idle socket, then `rounds` messages to the topic, each until every socket has it,
    with the CPU seconds each process used through them (and, with `py_spy`, their profiles)."""
    users = [f"topic-{n}" for n in range(sockets)]
    tokens = [token_for(settings, tenant.app_id, user, ttl=3600) for user in users]
    gateway = stack.services["gateway"].process
    assert gateway is not None
    headers = {"Authorization": f"Bearer {tenant.api_key}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as api:
        api.put("/v1/topics/everyone", json={"name": "everyone"}).raise_for_status()
        for start in range(0, sockets, MAX_SUBSCRIBE):
            chunk = {"user_ids": users[start : start + MAX_SUBSCRIBE]}
            api.post("/v1/topics/everyone/subscribers", json=chunk).raise_for_status()
        numbers = itertools.count()

        def post() -> None:
            content = {"title": f"to every subscriber {next(numbers)}"}
            body = {"to": [{"topic": "everyone"}], "channels": ["web"], "content": content}
            api.post("/v1/messages", json=body).raise_for_status()

        with socket_crowd() as crowd:
            memory = memory_per_socket(crowd, gateway.pid, stack.gateway_url, tokens, greeted=True)
            with profiled(stack, py_spy, "e2e-topic") as profiles:
                before = cpu_snapshot(stack, None)
                fanned = rounds_of(crowd, sockets, rounds, post)
                used = cpu.delta(before, cpu_snapshot(stack, None))
    result = {"sockets": sockets, "memory": memory, "fan_out": fanned, "cpu_seconds": used}
    result["cpu_ms_per_delivery"] = {
        label: round(1000 * seconds / (sockets * rounds), 3) for label, seconds in used.items()
    }
    if profiles:
        result["profiles"] = profiles
    return result


@contextmanager
def profiled(stack: Stack, executable: str | None, bench: str = "e2e") -> Iterator[dict[str, Any]]:
    """Every service of `stack` recorded by py-spy (`executable`) through the block, where
    their samples went in the dict yielded once the block ends; nothing without `executable`."""
    profiles: dict[str, Any] = {}
    profilers = {}
    if executable is not None:
        for name, service in stack.services.items():
            if service.process is not None:
                profilers[name] = Profiler(executable, bench)
                profilers[name].attach(service.process.pid, name, subprocesses=True)
    try:
        yield profiles
    finally:
        profiles.update({name: profiler.detach() for name, profiler in profilers.items()})


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The live path's targets, each with the figure measured and its baseline of this run."""
    paced, alone, closed = result["latency"], result["lone_latency"], result["closed_loop"]
    hello_cpu = result["hello_paced"]["cpu_ms_per_request"]
    topic, bare_server = result["topic"], result["bare_flask_socketio"]
    ratios = ratios_to_bare(topic, bare_server)
    ours_kib, bare_kib = topic["memory"]["kib_per_socket"], bare_server["memory"]["kib_per_socket"]
    rows = [
        (
            "CPU per message, paced",
            "<= 4.5 ms",
            f"{paced['cpu_ms_per_message']} ms",
            f"hello {hello_cpu} ms/request",
            f"{paced['cpu_ms_per_message'] / hello_cpu:.2f}" if hello_cpu else "",
        ),
        ("lone message at idle, p50", "<= 15 ms", f"{alone['p50_ms']} ms", "", ""),
        ("paced 200/s, p99", "<= 50 ms", f"{paced['p99_ms']} ms", "", ""),
        (
            "closed loop, end to end",
            ">= 0.5x hello",
            f"{closed['end_to_end_messages_per_s']:.0f} msg/s",
            f"hello {closed['hello_per_s']:.0f} req/s",
            f"{closed['ratio_to_hello']}",
        ),
        (
            f"topic fan-out to {topic['sockets']} sockets",
            ">= 0.5x bare",
            f"{topic['fan_out']['deliveries_per_s_best']:.0f}/s",
            f"bare {bare_server['fan_out']['deliveries_per_s_best']:.0f}/s",
            f"{ratios['fan_out_ratio_to_bare']}",
        ),
        (
            "gateway memory per idle socket",
            "<= bare, <= 100 KiB",
            f"{ours_kib} KiB",
            f"bare {bare_kib} KiB",
            f"{ratios['memory_ratio_to_bare']}",
        ),
    ]
    keys = ("what", "target", "measured", "baseline", "ratio")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def print_targets(rows: list[dict[str, Any]]) -> None:
    widths = {key: max(len(key), *(len(str(row[key])) for row in rows)) for key in rows[0]}
    for row in [{key: key for key in rows[0]}, *rows]:
        print("  ".join(str(row[key]).ljust(width) for key, width in widths.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="throughput messages")
    parser.add_argument("--users", type=int, default=10, help="connected users (fan-out)")
    parser.add_argument("--rate", type=float, default=200.0, help="latency phase messages/s")
    parser.add_argument("--api-workers", type=int, default=2, help="gunicorn API workers")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency phase length")
    parser.add_argument("--lone", type=int, default=50, help="lone messages, one at a time")
    parser.add_argument("--closed-seconds", type=float, default=10.0, help="closed loop length")
    parser.add_argument("--connections", type=int, default=16, help="closed loop connections")
    parser.add_argument("--sockets", type=int, default=10_000, help="topic subscribers' sockets")
    parser.add_argument("--fan-rounds", type=int, default=3, help="topic messages, one by one")
    parser.add_argument("--py-spy", metavar="PATH", help="profile the services: paced, topic")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print(WRK_MISSING, file=sys.stderr)
        return 2

    with isolated_settings() as settings:
        baseline = run_baseline(settings.amqp_url)
        stack = Stack(settings=settings, env=service_env(settings), api_workers=args.api_workers)
        runtime = Runtime.build(settings)
        try:
            stack.start_all()
            with runtime.sessions() as session, session.begin():
                # No limit in practice: the closed loop finds the stack's limit, not the app's.
                tenant = create_app_with_key(session, "bench", rate_limit=1e9, rate_burst=10**9)
            users = [f"bench-{n}" for n in range(args.users)]
            receiver = Receiver(stack.gateway_url, settings.secret_key, tenant.app_id, users)
            load = Load(stack, tenant.api_key)
            try:
                throughput(load, receiver, users, 20)  # warm-up
                before = cpu_snapshot(stack, load)
                fan_out = throughput(load, receiver, users, args.messages)
                fan_out["cpu_seconds"] = cpu.delta(before, cpu_snapshot(stack, load))
                with profiled(stack, args.py_spy) as profiles:
                    before = cpu_snapshot(stack, load)
                    paced = latency(load, receiver, users, args.rate, args.seconds)
                    paced["cpu_seconds"] = cpu.delta(before, cpu_snapshot(stack, load))
                if profiles:
                    paced["profiles"] = profiles
                paced["cpu_ms_per_message"] = pipeline_cpu_ms(
                    paced["cpu_seconds"], paced["samples"]
                )
                paced["median_ms_after_accepted"] = stage_latencies(
                    runtime, paced.pop("message_ids")
                )
                token, _ = mint_browser_token(settings.secret_key, tenant.app_id, "lone", 3600)
                alone = lone_latency(stack, tenant.api_key, token, "lone", args.lone)
                alone["median_ms_after_accepted"] = stage_latencies(
                    runtime, alone.pop("message_ids")
                )
                with hello_server(stack.env, stack.api_workers) as hello:
                    hello_at_rate = paced_hello(load, hello, args.rate, args.seconds)
                    closed = closed_loop(
                        stack,
                        load,
                        receiver,
                        hello,
                        tenant.api_key,
                        len(users),
                        args.closed_seconds,
                        args.connections,
                    )
            finally:
                load.close()
                receiver.close()
            topic = topic_fan_out(
                stack, settings, tenant, args.sockets, args.fan_rounds, args.py_spy
            )
        finally:
            stack.stop_all()
            runtime.close()
    bare_server = bare(args.sockets, args.fan_rounds)

    result: dict[str, Any] = {
        "baseline_raw_pika_messages_per_s": round(baseline.per_second, 1),
        "throughput": fan_out,
        "ratio_to_baseline": round(fan_out["deliveries_per_s"] / baseline.per_second, 3),
        "latency": paced,
        "hello_paced": hello_at_rate,
        "lone_latency": alone,
        "closed_loop": closed,
        "topic": topic,
        "bare_flask_socketio": bare_server,
    }
    result["targets"] = targets(result)
    record("e2e", result)
    print(
        f"\nend to end: {fan_out['deliveries_per_s']:.0f} deliveries/s "
        f"({fan_out['recipients_per_message']} recipients per message); "
        f"raw pika baseline {baseline.per_second:.0f} msg/s; "
        f"ratio {result['ratio_to_baseline']:.3f}\n"
        f"latency at {paced['achieved_rate']:.0f} msg/s: p50 {paced['p50_ms']} ms, "
        f"p99 {paced['p99_ms']} ms\n"
    )
    print_targets(result["targets"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
