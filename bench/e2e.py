"""End-to-end benchmark: POST /v1/messages to a Socket.IO client, through the whole stack.

It starts a private stack (its own PostgreSQL database and queue prefix, free ports), connects
one Socket.IO client per user, and measures

1. throughput: messages fanned out to every user, posted as fast as the API takes them;
   deliveries per second from the first POST to the last notification received;
2. latency: single-recipient messages posted at a fixed rate; POST-to-receipt p50 and p99;

beside a baseline measured in the same run on the same broker (raw pika, asynchronous confirms
plus a consumer with acks), printing the ratio. Run it with `make bench`; results also go to
var/bench-e2e.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import socketio

from bench import cpu
from bench.baseline import run_baseline
from producer_api.api_keys import create_app_with_key
from shared.runtime import Runtime
from shared.tokens import mint_browser_token
from tests.conftest import isolated_settings, service_env
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


def post(client: httpx.Client, users: list[str], title: str) -> tuple[str, float]:
    sent_at = time.monotonic()
    response = client.post(
        "/v1/messages",
        json={
            "to": [{"user_id": u} for u in users],
            "channels": ["web"],
            "content": {"title": title},
        },
    )
    response.raise_for_status()
    return response.json()["id"], sent_at


def throughput(
    stack: Stack, key: str, receiver: Receiver, users: list[str], messages: int
) -> dict[str, float]:
    expected = receiver.count + messages * len(users)
    with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}) as client:
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: post(client, users, f"t{n}"), range(messages)))
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
    stack: Stack, key: str, receiver: Receiver, users: list[str], rate: float, seconds: float
) -> dict[str, float]:
    total = int(rate * seconds)
    sent: dict[str, float] = {}
    lock = threading.Lock()
    with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}) as client:

        def one(n: int) -> None:
            message_id, sent_at = post(client, [users[n % len(users)]], f"l{n}")
            with lock:
                sent[message_id] = sent_at

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            for n in range(total):
                delay = started + n / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the load generator, not waiting for a result
                pool.submit(one, n)
        achieved = total / (time.monotonic() - started)
        wait_until(lambda: all(m in receiver.arrivals for m in sent), 120, "every latency sample")
    samples = sorted((receiver.arrivals[m] - t) * 1000 for m, t in sent.items())
    return {
        "target_rate": rate,
        "achieved_rate": round(achieved, 1),
        "samples": len(samples),
        "p50_ms": round(statistics.median(samples), 1),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 1),
        "max_ms": round(samples[-1], 1),
    }


def cpu_snapshot(stack: Stack) -> dict[str, float]:
    roots = {name: s.process.pid for name, s in stack.services.items() if s.process is not None}
    infrastructure = {"postgresql": "postgres", "rabbitmq": "beam.smp", "redis": "redis-server"}
    return cpu.snapshot(roots, infrastructure, alone={"bench clients": os.getpid()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="throughput messages")
    parser.add_argument("--users", type=int, default=10, help="connected users (fan-out)")
    parser.add_argument("--rate", type=float, default=200.0, help="latency phase messages/s")
    parser.add_argument("--api-workers", type=int, default=2, help="gunicorn API workers")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency phase length")
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
            try:
                throughput(stack, tenant.api_key, receiver, users, 20)  # warm-up
                before = cpu_snapshot(stack)
                fan_out = throughput(stack, tenant.api_key, receiver, users, args.messages)
                fan_out["cpu_seconds"] = cpu.delta(before, cpu_snapshot(stack))  # type: ignore[assignment]
                before = cpu_snapshot(stack)
                paced = latency(stack, tenant.api_key, receiver, users, args.rate, args.seconds)
                paced["cpu_seconds"] = cpu.delta(before, cpu_snapshot(stack))  # type: ignore[assignment]
            finally:
                receiver.close()
        finally:
            stack.stop_all()
            runtime.close()

    result = {
        "baseline_raw_pika_messages_per_s": round(baseline.per_second, 1),
        "throughput": fan_out,
        "ratio_to_baseline": round(fan_out["deliveries_per_s"] / baseline.per_second, 3),
        "latency": paced,
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
        f"p99 {paced['p99_ms']} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
