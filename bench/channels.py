"""Channel worker benchmark: emails and webhooks per second through a channel worker.

Each channel is measured against a local server, beside a bare client loop against the same
server in the same run:

1. email: a local SMTP server (aiosmtpd, accepting everything); the baseline is `smtplib` sending
   the same number of multipart mails over one reused connection;
2. webhook: a local HTTP/1.1 keep-alive receiver answering 204; the baseline is an `httpx`
   client with keep-alive posting the same number of JSON bodies.

For the worker, the script starts a private pipeline (its own PostgreSQL database and queue
prefix: `omnipush serve api`, `relay` and `dispatcher`), posts the messages through
`POST /v1/messages/batch` and waits until every delivery waits in the channel's queue. Only then
does it start `omnipush serve worker --channel C`, so that the figure is the worker's alone:
sends per second from the first arrival at the server to the last, the same clock the
baselines are read with. The target is a ratio of at least 0.5 for each. Results are printed and
written to var/bench-channels.json.

    python -m bench.channels [--emails 1000] [--webhooks 1000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import smtplib
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from bench import cpu
from bench.results import record
from producer_api.api_keys import create_app_with_key
from shared.amqp.topology import Topology
from shared.runtime import Runtime
from tests.conftest import isolated_settings, queue_depth, service_env
from tests.stack import Service, free_port, wait_http_ok, wait_until

BATCH = 500
_FORK = multiprocessing.get_context("fork")


class Arrivals:
    """How many requests reached a local server, and when the first and the last did.

    Kept in shared memory: each server runs in a process of its own, so that neither the
    baseline loop nor the benchmark's bookkeeping takes its interpreter's time.
    """

    def __init__(self) -> None:
        self._count = _FORK.Value("q", 0)
        self._first = _FORK.Value("d", 0.0)
        self._last = _FORK.Value("d", 0.0)

    def record(self) -> None:
        now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
        with self._count.get_lock():
            if self._count.value == 0:
                self._first.value = now
            self._count.value += 1
            self._last.value = now

    def reset(self) -> None:
        with self._count.get_lock():
            self._count.value = 0

    def wait_for(self, count: int, timeout: float) -> None:
        wait_until(lambda: self._count.value >= count, timeout, f"{count} arrivals", interval=0.05)

    def per_second(self) -> float:
        """Arrivals per second from the first to the last (the first opens the clock)."""
        with self._count.get_lock():
            count, first, last = self._count.value, self._first.value, self._last.value
        return (count - 1) / (last - first) if last > first else float("inf")


class _AcceptAll:
    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.arrivals.record()
        return "250 OK"


def _serve_smtp(port: int, arrivals: Arrivals) -> None:
    controller = Controller(_AcceptAll(arrivals), hostname="127.0.0.1", port=port)
    controller.start()
    threading.Event().wait()


def _serve_http(port: int, arrivals: Arrivals) -> None:
    class Receiver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            arrivals.record()
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: one line per request would cost more than the request."""

    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    server.daemon_threads = True
    server.serve_forever()


@contextmanager
def sink(serve: Callable[[int, Arrivals], None]) -> Iterator[tuple[int, Arrivals]]:
    """A local server (`serve`) in a process of its own; yields its port and its arrivals."""
    arrivals, port = Arrivals(), free_port()
    process = _FORK.Process(target=serve, args=(port, arrivals), daemon=True)
    process.start()
    try:
        wait_until(lambda: _listening(port), 10, f"a server on port {port}")
        yield port, arrivals
    finally:
        process.kill()
        process.join(10)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def smtplib_loop(port: int, count: int) -> None:
    """The email baseline: `count` multipart mails over one smtplib connection."""
    with smtplib.SMTP("127.0.0.1", port) as client:
        for index in range(count):
            mail = EmailMessage()
            mail["From"] = "Shop <noreply@example.com>"
            mail["To"] = f"user{index}@example.com"
            mail["Subject"] = f"bench {index}"
            mail.set_content("Your order has shipped.")
            mail.add_alternative("<p>Your order has shipped.</p>", subtype="html")
            client.send_message(mail)


def httpx_loop(port: int, count: int) -> None:
    """The webhook baseline: `count` JSON POSTs through one keep-alive httpx client."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for index in range(count):
            client.post("/hook", json={"id": f"bench {index}", "body": "Your order has shipped."})


def baseline(arrivals: Arrivals, count: int, loop: Callable[[], None]) -> float:
    arrivals.reset()
    loop()
    arrivals.wait_for(count, 60)
    rate = arrivals.per_second()
    arrivals.reset()
    return rate


class Pipeline:
    """A private api, relay and dispatcher, and an app to post with."""

    def __init__(self, settings: Any, env: dict[str, str]) -> None:
        self.settings = settings
        self.env = env
        self.services: list[Service] = []
        self.runtime = Runtime.build(settings)

    def start(self) -> None:
        for args in (
            ["serve", "api", "--workers", "2"],
            ["serve", "relay"],
            ["serve", "dispatcher"],
        ):
            self.services.append(Service(args=args, env=self.env).start())
        wait_http_ok(f"http://{self.settings.api_bind}/healthz", 60)
        for service in self.services[1:]:
            service.wait_for_log("amqp.ready", 60)
        with self.runtime.sessions() as session, session.begin():
            self.tenant = create_app_with_key(session, "bench-channels")
        self.http = httpx.Client(
            base_url=f"http://{self.settings.api_bind}",
            headers={"Authorization": f"Bearer {self.tenant.api_key}"},
            timeout=60,
        )

    def post(self, messages: list[dict[str, Any]]) -> None:
        for start in range(0, len(messages), BATCH):
            answer = self.http.post(
                "/v1/messages/batch", json={"messages": messages[start : start + BATCH]}
            )
            answer.raise_for_status()
            refused = [r for r in answer.json()["results"] if r.get("status") != "accepted"]
            if refused:
                raise RuntimeError(f"the API refused messages: {refused[:3]}")

    def worker_rate(self, channel: str, arrivals: Arrivals, count: int) -> dict[str, Any]:
        """Wait until `count` deliveries of `channel` are queued, then time a worker on them."""
        queue = Topology(prefix=self.settings.queue_prefix).channel_queue(channel)
        wait_until(lambda: queue_depth(queue) >= count, 120, f"{count} deliveries queued")
        arrivals.reset()
        worker = Service(args=["serve", "worker", "--channel", channel], env=self.env)
        self.services.append(worker.start())
        assert worker.process is not None
        roots = {"worker": worker.process.pid}
        # From ready on, so that the figure leaves out the start-up's imports.
        worker.wait_for_log("amqp.ready", 60)
        before = cpu.snapshot(roots, {}, {})
        arrivals.wait_for(count, 300)
        after = cpu.snapshot(roots, {}, {})
        return {
            "per_s": round(arrivals.per_second(), 1),
            "worker_cpu_ms_per_send": round(
                1000 * cpu.delta(before, after).get("worker", 0.0) / count, 2
            ),
        }

    def stop(self) -> None:
        for service in self.services:
            service.terminate()
        for service in self.services:
            service.wait_stopped()
        self.http.close()
        self.runtime.close()


def through_worker(
    channel: str,
    count: int,
    env: dict[str, str],
    settings: Any,
    arrivals: Arrivals,
    to: dict[str, str],
    prepare: Callable[[Pipeline], None] = lambda _pipeline: None,
) -> dict[str, Any]:
    """`count` messages to `to` on `channel` through a private pipeline, then a worker."""
    pipeline = Pipeline(settings, env)
    try:
        pipeline.start()
        prepare(pipeline)
        body = "Your order has shipped."
        pipeline.post(
            [
                {
                    "to": [{key: value.format(index=index) for key, value in to.items()}],
                    "channels": [channel],
                    "content": {"title": f"bench {index}", "body": body},
                }
                for index in range(count)
            ]
        )
        return pipeline.worker_rate(channel, arrivals, count)
    finally:
        pipeline.stop()


def email_phase(count: int) -> dict[str, Any]:
    with sink(_serve_smtp) as (port, arrivals), isolated_settings() as settings:
        bare = baseline(arrivals, count, lambda: smtplib_loop(port, count))
        env = service_env(settings) | {
            "OMNIPUSH_SMTP_URL": f"smtp://127.0.0.1:{port}",
            "OMNIPUSH_SMTP_FROM": "Shop <noreply@example.com>",
        }
        worker = through_worker(
            "email", count, env, settings, arrivals, {"email": "user{index}@example.com"}
        )
    return {
        "baseline_smtplib_per_s": round(bare, 1),
        "worker": worker,
        "ratio": worker["per_s"] / bare,
    }


def webhook_phase(count: int) -> dict[str, Any]:
    with sink(_serve_http) as (port, arrivals), isolated_settings() as settings:
        bare = baseline(arrivals, count, lambda: httpx_loop(port, count))
        env = service_env(settings) | {"OMNIPUSH_OUTBOUND_ALLOW": "127.0.0.1/32"}

        def endpoint(pipeline: Pipeline) -> None:
            hook = {"kind": "webhook", "url": f"http://127.0.0.1:{port}/hook"}
            pipeline.http.put("/v1/endpoints/bench", json=hook).raise_for_status()

        worker = through_worker(
            "webhook", count, env, settings, arrivals, {"endpoint": "bench"}, endpoint
        )
    return {
        "baseline_httpx_per_s": round(bare, 1),
        "worker": worker,
        "ratio": worker["per_s"] / bare,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=1000, help="mails per phase")
    parser.add_argument("--webhooks", type=int, default=1000, help="webhook deliveries per phase")
    args = parser.parse_args()
    result = {"email": email_phase(args.emails), "webhook": webhook_phase(args.webhooks)}
    for phase in result.values():
        phase["ratio"] = round(phase["ratio"], 3)
    record("channels", result)
    email, webhook = result["email"], result["webhook"]
    print(
        f"\nemail: {email['worker']['per_s']:.0f}/s through the worker, smtplib "
        f"{email['baseline_smtplib_per_s']:.0f}/s, ratio {email['ratio']:.3f} (target 0.5)\n"
        f"webhook: {webhook['worker']['per_s']:.0f}/s through the worker, httpx "
        f"{webhook['baseline_httpx_per_s']:.0f}/s, ratio {webhook['ratio']:.3f} (target 0.5)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
