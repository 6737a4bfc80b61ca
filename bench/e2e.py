"""End-to-end benchmark: POST /v1/messages to a Socket.IO client, through the whole stack.

It starts a private stack (its own PostgreSQL database and queue prefix, free ports), connects
one Socket.IO client per user, and measures

1. throughput: messages fanned out to every user, posted as fast as the API takes them;
   deliveries per second from the first POST to the last notification received;
2. latency: single-recipient messages posted at a fixed rate; POST-to-receipt p50 and p99;
3. lone latency: one message at a time at idle, to a user whose socket is the official
   socket.io-client's (Node.js, `tests/socket_crowd.js`); POST-to-receipt p50 and p99;

beside a baseline measured in the same run on the same broker (raw pika, asynchronous confirms
plus a consumer with acks), printing the ratio. Run it with `make bench`; results also go to
var/bench-e2e.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import socketio
from sqlalchemy import select

from bench import cpu
from bench.baseline import run_baseline
from bench.load import post_messages
from producer_api.api_keys import create_app_with_key
from shared.models import Event
from shared.runtime import Runtime
from shared.tokens import mint_browser_token
from tests.conftest import isolated_settings, service_env
from tests.socket_crowd import socket_crowd
from tests.stack import Stack, wait_until


class Receiver:
    """Socket.IO clients for many users, recording when each notification arrived."""

    def __init__(self, gateway_url: str, secret: str, app_id: str, users: list[str]) -> None:
        self.arrivals: dict[str, float] = {}
        self.count = 0
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


def cpu_snapshot(stack: Stack, load: Load) -> dict[str, float]:
    roots = {name: s.process.pid for name, s in stack.services.items() if s.process is not None}
    roots["bench load generator"] = load.pid
    infrastructure = {"postgresql": "postgres", "rabbitmq": "beam.smp", "redis": "redis-server"}
    return cpu.snapshot(roots, infrastructure, alone={"bench receivers": os.getpid()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="throughput messages")
    parser.add_argument("--users", type=int, default=10, help="connected users (fan-out)")
    parser.add_argument("--rate", type=float, default=200.0, help="latency phase messages/s")
    parser.add_argument("--api-workers", type=int, default=2, help="gunicorn API workers")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency phase length")
    parser.add_argument("--lone", type=int, default=50, help="lone messages, one at a time")
    args = parser.parse_args()

    with isolated_settings() as settings:
        baseline = run_baseline(settings.amqp_url)
        stack = Stack(settings=settings, env=service_env(settings), api_workers=args.api_workers)
        runtime = Runtime.build(settings)
        try:
            stack.start_all()
            with runtime.sessions() as session, session.begin():
                tenant = create_app_with_key(session, "bench")
            users = [f"bench-{n}" for n in range(args.users)]
            receiver = Receiver(stack.gateway_url, settings.secret_key, tenant.app_id, users)
            load = Load(stack, tenant.api_key)
            try:
                throughput(load, receiver, users, 20)  # warm-up
                before = cpu_snapshot(stack, load)
                fan_out = throughput(load, receiver, users, args.messages)
                fan_out["cpu_seconds"] = cpu.delta(before, cpu_snapshot(stack, load))
                before = cpu_snapshot(stack, load)
                paced = latency(load, receiver, users, args.rate, args.seconds)
                paced["cpu_seconds"] = cpu.delta(before, cpu_snapshot(stack, load))
                paced["median_ms_after_accepted"] = stage_latencies(
                    runtime, paced.pop("message_ids")
                )
                token, _ = mint_browser_token(settings.secret_key, tenant.app_id, "lone", 3600)
                alone = lone_latency(stack, tenant.api_key, token, "lone", args.lone)
                alone["median_ms_after_accepted"] = stage_latencies(
                    runtime, alone.pop("message_ids")
                )
            finally:
                load.close()
                receiver.close()
        finally:
            stack.stop_all()
            runtime.close()

    result = {
        "baseline_raw_pika_messages_per_s": round(baseline.per_second, 1),
        "throughput": fan_out,
        "ratio_to_baseline": round(fan_out["deliveries_per_s"] / baseline.per_second, 3),
        "latency": paced,
        "lone_latency": alone,
    }
    Path("var").mkdir(exist_ok=True)
    Path("var/bench-e2e.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(
        f"\nend to end: {fan_out['deliveries_per_s']:.0f} deliveries/s "
        f"({fan_out['recipients_per_message']} recipients per message); "
        f"raw pika baseline {baseline.per_second:.0f} msg/s; "
        f"ratio {result['ratio_to_baseline']:.3f}\n"
        f"latency at {paced['achieved_rate']:.0f} msg/s: p50 {paced['p50_ms']} ms, "
        f"p99 {paced['p99_ms']} ms\n"
        f"lone message at idle to socket.io-client: p50 {alone['p50_ms']} ms, "
        f"p99 {alone['p99_ms']} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
