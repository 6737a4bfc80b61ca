"""Producer API benchmark: accepted POST /v1/messages per second, beside a bare Flask app.

Both are served by gunicorn with the same settings, in the same run. The script creates its own
PostgreSQL database (dropped afterwards), starts the API exactly as production does
(`omnipush serve api`, configured through OMNIPUSH_* variables; the relay does not run, since
only acceptance is measured), creates an app with `omnipush apps create` (with a very high
`--rate-limit` and `--burst`), and starts `bench.hello_app`, a Flask view returning "hello"
served through the very gunicorn options `omnipush.services.run_api` uses. Then, with `wrk` as
the load generator (C, so it is not the bottleneck) at the same concurrency for both, it measures

1. single messages: alternating rounds (hello, api, hello, api, ...), each a warm-up and then a
   fixed duration; 202 answers per second for the API, 2xx for hello; each round's figures, the
   ratio of each api round to the hello round before it, and the median ratio (target >= 0.5);
2. batches: POST /v1/messages/batch with N messages per request from a few connections;
   accepted messages (items whose status is "accepted") per second (target >= 10,000). Skipped,
   saying why, if a probe batch is not accepted.

Every round also reports the CPU seconds of the gunicorn tree under test, of PostgreSQL (every
`postgres` process of the host, exited backends included) and Redis, of wrk and of the whole
machine (with how busy it was just before, idle, which is the neighbours' share), the CPU
milliseconds per accepted request, which is what says where the time goes, and for the API the
PostgreSQL sessions opened during the round and the rows stored (202s are checked against them).
Non-2xx answers and socket errors are counted, never taken as accepted. Results are printed and
written to var/bench-api.json.

Needs `wrk` (Debian: `apt-get install -y wrk`; `make bench` installs it when missing).

    python -m bench.api [--rounds 3] [--seconds 10] [--warmup 2] [--connections 16]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from bench import cpu
from bench.results import record
from shared.db import make_engine
from shared.models import Message
from tests.conftest import isolated_settings, service_env
from tests.stack import free_port, run_omnipush, wait_http_ok

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = Path(__file__).with_name("wrk_report.lua")
WRK_MISSING = (
    "This benchmark needs wrk, the HTTP load generator (a Python client would be the bottleneck).\n"
    "Install it with `apt-get install -y wrk` (Debian/Ubuntu, as root), or run `make bench`,\n"
    "which installs it when it is missing."
)
MESSAGE = {
    "to": [{"user_id": "alice"}],
    "channels": ["web"],
    "content": {"title": "Hi", "body": "Your order has shipped."},
}
VERY_HIGH_RATE_LIMIT = "1000000000"
_TICKS = os.sysconf("SC_CLK_TCK")


def bounded(low: float, high: float, kind: type = int) -> Any:
    """An argparse type accepting `kind` values from `low` to `high`."""

    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


class Server:
    """One HTTP server (a gunicorn master and its workers) as a subprocess group of its own."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], url: str) -> None:
        self.name = name
        self.url = url
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, path: str) -> None:
        try:
            wait_http_ok(self.url + path, timeout=60)
        except AssertionError as error:
            raise RuntimeError(f"{self.name} did not start:\n{self.output()[-3000:]}") from error

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        """SIGTERM the group, wait, SIGKILL what is left."""
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(20)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self.log.close()


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / _TICKS


def postgres_seconds() -> float:
    """CPU seconds of every PostgreSQL process, including backends that have exited since: the
    postmaster reaps them, so their time is in its children's time (cutime, cstime)."""
    stats: dict[int, tuple[int, str, list[str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                raw = (entry / "stat").read_text()
                fields = raw[raw.rindex(")") + 2 :].split()
                name = raw[raw.index("(") + 1 : raw.rindex(")")]
                stats[int(entry.name)] = (int(fields[1]), name, fields)
    total = 0
    for parent, name, fields in stats.values():
        if name.startswith("postgres"):
            total += int(fields[11]) + int(fields[12])
            if not stats.get(parent, (0, "", []))[1].startswith("postgres"):
                total += int(fields[13]) + int(fields[14])  # the postmaster
    return total / _TICKS


def cpu_now(server: Server) -> dict[str, float]:
    seconds = cpu.snapshot({"gunicorn": server.process.pid}, {"redis": "redis-server"}, {})
    seconds["postgresql"] = postgres_seconds()
    seconds["machine"] = machine_busy_seconds()
    return seconds


def background_cores(seconds: float = 1.0) -> float:
    """How many cores the machine keeps busy while this benchmark sends nothing: neighbours."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    return round((machine_busy_seconds() - before) / seconds, 2)


def run_wrk(
    url: str,
    *,
    method: str,
    body: Path | None,
    authorization: str | None,
    seconds: float,
    connections: int,
    threads: int,
    count_items: bool = False,
    timeout_s: int = 5,
    unique_users: int | None = None,
) -> dict[str, Any]:
    """One wrk run; its own report (see wrk_report.lua) plus the CPU seconds wrk used. With
    `unique_users`, `body` is a template that each request fills in with its own number."""
    argv = [
        "wrk",
        f"--threads={min(threads, connections)}",
        f"--connections={connections}",
        f"--duration={max(1, round(seconds))}s",
        f"--timeout={timeout_s}s",
        f"--script={WRK_SCRIPT}",
        url,
        "--",
        method,
        str(body) if body is not None else "-",
        authorization or "-",
        "accepted" if count_items else "-",
        *([str(unique_users)] if unique_users else []),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in done.stdout.splitlines() if line.startswith("WRK_JSON ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    report: dict[str, Any] = json.loads(lines[-1].removeprefix("WRK_JSON "))
    report["wrk_cpu_seconds"] = (after.ru_utime + after.ru_stime) - (
        before.ru_utime + before.ru_stime
    )
    return report


def answered(report: dict[str, Any], expect: int | None) -> int:
    """How many of a wrk run's answers had the status `expect` (None: any 2xx)."""
    return sum(
        n
        for status, n in report["statuses"].items()
        if (int(status) == expect if expect else 200 <= int(status) < 300)
    )


def measure(
    server: Server,
    path: str,
    *,
    expect: int | None,
    count_items: bool = False,
    **wrk_options: Any,
) -> dict[str, Any]:
    """A measured wrk run against `server` with its CPU split. `expect`: the status counted as
    accepted (None: any 2xx); with `count_items`, accepted batch items are counted instead."""
    background = background_cores()
    before = cpu_now(server)
    report = run_wrk(server.url + path, count_items=count_items, **wrk_options)
    used = cpu.delta(before, cpu_now(server))
    seconds = report["duration_us"] / 1e6
    statuses = {int(k): v for k, v in report["statuses"].items()}
    ok = answered(report, expect)
    accepted = report["items_accepted"] if count_items else ok
    used["wrk"] = round(report["wrk_cpu_seconds"], 2)
    # Busy CPU no process above accounts for: the kernel, this script, and neighbours on the
    # shared machine (see idle_machine_busy_cores_before), which ps does not show.
    listed = used["gunicorn"] + used["postgresql"] + used["redis"] + used["wrk"]
    used["other"] = round(used["machine"] - listed, 2)
    result: dict[str, Any] = {
        "server": server.name,
        "seconds": round(seconds, 2),
        "requests": report["requests"],
        "ok_responses": ok,
        "accepted_per_s": round(accepted / seconds, 1),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "non_2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
        "socket_errors": {k: v for k, v in report["socket_errors"].items() if v},
        "latency_ms": {k: round(v / 1000, 1) for k, v in report["latency_us"].items()},
        "cpu_seconds": used,
        "idle_machine_busy_cores_before": background,
        "cpu_ms_per_accepted": {
            label: round(1000 * used[label] / accepted, 3) if accepted else None
            for label in ("gunicorn", "postgresql", "redis")
        },
    }
    if any(s >= 500 for s in statuses):
        result["server_log_tail"] = server.output()[-2000:]
    if count_items:
        result["items_accepted"] = accepted
        result["items_failed"] = report["items_failed"]
    return result


def post_once(url: str, path: str, body: bytes, authorization: str) -> tuple[int, bytes]:
    address = url.removeprefix("http://")
    host, _, port = address.partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        headers = {"Authorization": authorization, "Content-Type": "application/json"}
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def create_app(env: dict[str, str]) -> tuple[dict[str, str], bool]:
    """`omnipush apps create`, with a very high `--rate-limit` (and `--burst`) when the command
    has them, so that the per-key limiter is exercised but never refuses."""
    usage = run_omnipush("apps", "create", "--help", env=env).stdout
    limited = "--rate-limit" in usage
    args = ["apps", "create", "bench-api"]
    if limited:
        args += ["--rate-limit", VERY_HIGH_RATE_LIMIT]
    if "--burst" in usage:
        args += ["--burst", VERY_HIGH_RATE_LIMIT]
    created = run_omnipush(*args, env=env)
    if created.returncode != 0:
        raise RuntimeError(f"omnipush {' '.join(args)} failed:\n{created.stderr}")
    return json.loads(created.stdout.strip().splitlines()[-1]), limited


class Store:
    """Reads the benchmark's database between runs: the messages it holds (to check the 202s
    against the rows) and how many PostgreSQL sessions were ever opened on it (connections the
    API's pool opened and closed again; each costs PostgreSQL a fork)."""

    #: PostgreSQL's backends report their statistics at most once a second.
    STATS_DELAY_S = 1.1

    def __init__(self, database_url: str) -> None:
        self.engine = make_engine(database_url)

    def reading(self) -> dict[str, int]:
        time.sleep(self.STATS_DELAY_S)
        with self.engine.connect() as connection:
            messages = connection.scalar(select(func.count()).select_from(Message))
            sessions = connection.scalar(
                text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            )
        return {"messages": int(messages or 0), "sessions": int(sessions or 0)}

    def change(self, before: dict[str, int]) -> dict[str, int]:
        after = self.reading()
        return {
            "rows_stored": after["messages"] - before["messages"],
            # The reading's own connection comes from a pool and is opened once.
            "postgresql_sessions_opened": after["sessions"] - before["sessions"],
        }

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def hello_server(env: dict[str, str], workers: int) -> Iterator[Server]:
    """`bench.hello_app` on a free port with `workers` gunicorn workers, ready."""
    bind = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "bench.hello_app", "--bind", bind, "--workers", str(workers)]
    hello = Server("hello", argv, env, f"http://{bind}")
    try:
        hello.wait_ready("/")
        yield hello
    finally:
        hello.stop()


@contextmanager
def servers(env: dict[str, str], api_bind: str, workers: int) -> Iterator[tuple[Server, Server]]:
    api = Server(
        "api",
        [sys.executable, "-m", "omnipush", "serve", "api", "--workers", str(workers)],
        env,
        f"http://{api_bind}",
    )
    try:
        api.wait_ready("/healthz")
        with hello_server(env, workers) as hello:
            yield hello, api
    finally:
        api.stop()


def single_rounds(
    hello: Server,
    api: Server,
    store: Store,
    body: Path,
    authorization: str,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    wrk = {"seconds": args.seconds, "connections": args.connections, "threads": args.wrk_threads}
    rounds = []
    for number in range(1, args.rounds + 1):
        for server, path, auth, expect in (
            (hello, "/", None, None),
            (api, "/v1/messages", authorization, 202),
        ):
            options = {"method": "POST", "body": body, "authorization": auth, **wrk}
            run_wrk(server.url + path, **{**options, "seconds": args.warmup})
            before = store.reading() if server is api else None
            result = measure(server, path, expect=expect, **options)
            result["round"] = number
            if before is not None:
                result.update(store.change(before))
            rounds.append(result)
            print(
                f"round {number} {server.name:5}: {result['accepted_per_s']:8.1f} accepted/s, "
                f"non-2xx {result['non_2xx']}, cpu {result['cpu_seconds']}",
                file=sys.stderr,
                flush=True,
            )
    return rounds


def batch_phase(
    api: Server, store: Store, directory: Path, authorization: str, args: argparse.Namespace
) -> dict[str, Any]:
    body = directory / "batch.json"
    body.write_text(json.dumps({"messages": [MESSAGE] * args.batch_size}))
    status, payload = post_once(api.url, "/v1/messages/batch", body.read_bytes(), authorization)
    if status != 200:
        return {"skipped": f"POST /v1/messages/batch answered {status}: {payload[:300]!r}"}
    probe = json.loads(payload)
    accepted = sum(1 for item in probe.get("results", []) if item.get("status") == "accepted")
    if accepted == 0:
        return {"skipped": f"the probe batch had no accepted item: {payload[:300]!r}"}
    options = {
        "method": "POST",
        "body": body,
        "authorization": authorization,
        "connections": args.batch_connections,
        "threads": args.wrk_threads,
        "timeout_s": 30,
    }
    run_wrk(api.url + "/v1/messages/batch", **{**options, "seconds": args.warmup})
    before = store.reading()
    result = measure(
        api,
        "/v1/messages/batch",
        expect=200,
        count_items=True,
        seconds=args.batch_seconds,
        **options,
    )
    result.update(store.change(before))
    result["messages_per_request"] = args.batch_size
    result["probe_accepted_items"] = accepted
    return result


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    hello = [r for r in rounds if r["server"] == "hello"]
    api = [r for r in rounds if r["server"] == "api"]
    ratios = [a["accepted_per_s"] / h["accepted_per_s"] for h, a in zip(hello, api, strict=True)]
    return {
        "hello_median_per_s": round(statistics.median(r["accepted_per_s"] for r in hello), 1),
        "api_median_accepted_per_s": round(statistics.median(r["accepted_per_s"] for r in api), 1),
        "ratios": [round(r, 3) for r in ratios],
        "median_ratio": round(statistics.median(ratios), 3),
        "api_median_cpu_ms_per_accepted": {
            label: round(statistics.median(r["cpu_ms_per_accepted"][label] or 0 for r in api), 3)
            for label in ("gunicorn", "postgresql", "redis")
        },
        "hello_median_cpu_ms_per_request": round(
            statistics.median(r["cpu_ms_per_accepted"]["gunicorn"] or 0 for r in hello), 3
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=bounded(1, 10), default=3, help="hello+api round pairs")
    parser.add_argument("--seconds", type=bounded(1, 120), default=10, help="measured per round")
    parser.add_argument("--warmup", type=bounded(1, 30), default=2, help="before each round")
    parser.add_argument("--connections", type=bounded(1, 256), default=16, help="both servers")
    parser.add_argument("--wrk-threads", type=bounded(1, 8), default=1, help="wrk's own threads")
    parser.add_argument("--api-workers", type=bounded(1, 16), default=2, help="both servers")
    parser.add_argument("--batch-size", type=bounded(1, 1000), default=500, help="per request")
    parser.add_argument("--batch-connections", type=bounded(1, 64), default=4)
    parser.add_argument("--batch-seconds", type=bounded(1, 120), default=10, help="measured")
    parser.add_argument("--skip-batch", action="store_true", help="single messages only")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print(WRK_MISSING, file=sys.stderr)
        return 2

    with isolated_settings() as settings, tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        env = service_env(settings)
        app, rate_limited = create_app(env)
        authorization = f"Bearer {app['api_key']}"
        body = directory / "message.json"
        body.write_text(json.dumps(MESSAGE))
        store = Store(settings.database_url)
        try:
            with servers(env, settings.api_bind, args.api_workers) as (hello, api):
                rounds = single_rounds(hello, api, store, body, authorization, args)
                batch: dict[str, Any] = {"skipped": "--skip-batch"}
                if not args.skip_batch:
                    batch = batch_phase(api, store, directory, authorization, args)
        finally:
            store.close()

    result: dict[str, Any] = {
        "settings": {
            "connections": args.connections,
            "wrk_threads": args.wrk_threads,
            "gunicorn_workers": args.api_workers,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "app_rate_limit": VERY_HIGH_RATE_LIMIT if rate_limited else "no --rate-limit option",
        },
        "single": summarize(rounds),
        "rounds": rounds,
        "batch": batch,
    }
    record("api", result)
    single = result["single"]
    print(
        f"\nsingle POST /v1/messages: {single['api_median_accepted_per_s']:.0f} accepted/s; "
        f"bare Flask hello {single['hello_median_per_s']:.0f} req/s; median ratio "
        f"{single['median_ratio']:.3f} (target >= 0.5; rounds {single['ratios']})"
    )
    if "skipped" in batch:
        print(f"batch: skipped, {batch['skipped']}")
    else:
        print(
            f"batch of {batch['messages_per_request']}: {batch['accepted_per_s']:.0f} accepted "
            f"messages/s (target >= 10,000); non-2xx {batch['non_2xx']}, "
            f"failed items {batch['items_failed']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
