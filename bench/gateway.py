"""Gateway benchmark: thousands of sockets on one gateway process, beside bare Flask-SocketIO.

One run, against a private store and queue prefix, measures side by side:

1. memory per idle socket: the resident memory of the server (gunicorn master and worker)
   before and after N sockets connected and settled, for the gateway and for the bare
   Flask-SocketIO app of `bench.bare_gateway` under the same gunicorn options;
2. fan-out: one notification to each of N connected users, from the moment it starts until the
   last socket has its own; the gateway's come through the live feed, appended as the web worker
   appends them, the bare app's are emitted to each socket by the app itself;
3. reconnect storm (gateway only): the gateway restarted under its N sockets, which reconnect
   by themselves and say `since`; seconds from the restart until every socket has the
   notification it missed while the gateway was down.

The sockets are official socket.io-client sockets in one Node.js process
(`tests/socket_crowd.js`), which is not counted. Results also go to var/bench-gateway.json.
With `--py-spy PATH` the restarted gateway is profiled through the storm (from when it is
ready), and the summary says where its samples went.

    python -m bench.gateway [--sockets 10000] [--rounds 3] [--py-spy PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench import cpu
from bench.cpu import processes
from bench.profiling import Profiler
from bench.results import record
from producer_api.api_keys import create_app_with_key
from shared.runtime import Runtime
from shared.settings import Settings
from tests.conftest import isolated_settings
from tests.gateway_support import append_to_feed, notify_each, running_gateway, token_for
from tests.socket_crowd import SocketCrowd, socket_crowd
from tests.stack import free_port, wait_http_ok

ROOT = Path(__file__).resolve().parent.parent
INFRASTRUCTURE = {"postgresql": "postgres", "redis": "redis-server"}
TIMEOUT = 300.0


def resident_kib(root: int) -> int:
    """Resident memory of `root` and every process under it, in KiB."""
    total = 0
    for pid in cpu.tree(root, processes()):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def settled_kib(root: int) -> int:
    """Resident memory once it has stopped changing (within 0.5 % over a second), or after 15 s."""
    last, deadline = resident_kib(root), time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(1)
        now = resident_kib(root)
        if abs(now - last) <= last * 0.005:
            return now
        last = now
    return last


def memory_per_socket(
    crowd: SocketCrowd, pid: int, url: str, tokens: list[str], *, greeted: bool
) -> dict[str, float]:
    """Resident memory per socket of `tokens`' sockets opened on the server at `url` (process
    `pid`), once all are connected, and with `greeted` once the gateway has finished each one's
    connect replay (so that the fan-out after it measures the fan-out alone)."""
    before = settled_kib(pid)
    connected = crowd.open(url, tokens, reconnect=True, timeout=TIMEOUT, greeted=greeted)
    assert connected == len(tokens), f"only {connected} of {len(tokens)} sockets connected"
    after = settled_kib(pid)
    return {
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_socket": round((after - before) / len(tokens), 1),
    }


def fan_out(crowd: SocketCrowd, received: int, start: Callable[[], object]) -> float:
    """Seconds from `start()` until every socket has `received` notifications."""
    crowd.send({"op": "wait", "received": received, "timeout_ms": int(TIMEOUT * 1000)})
    start()
    answer = crowd.answer()
    assert answer["done"] == crowd_size(crowd), f"only {answer['done']} sockets got it"
    return float(answer["last_ms"]) / 1000


def crowd_size(crowd: SocketCrowd) -> int:
    return len(crowd.state()["sockets"])


def rounds_of(
    crowd: SocketCrowd, sockets: int, rounds: int, start: Callable[[], object]
) -> dict[str, Any]:
    seconds = [fan_out(crowd, n + 1, start) for n in range(rounds)]
    best = min(seconds)
    return {
        "seconds": [round(s, 3) for s in seconds],
        "deliveries_per_s_best": round(sockets / best, 1),
        "deliveries_per_s_median": round(sockets / statistics.median(seconds), 1),
    }


@contextmanager
def bare_server() -> Iterator[tuple[str, int]]:
    """`bench.bare_gateway` on a free port: its URL and pid."""
    bind = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_gateway", "--bind", bind],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http_ok(f"http://{bind}/healthz")
        yield f"http://{bind}", process.pid
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def bare(sockets: int, rounds: int) -> dict[str, Any]:
    tokens = [f"bare-{n}" for n in range(sockets)]
    with bare_server() as (url, pid), socket_crowd() as crowd:
        memory = memory_per_socket(crowd, pid, url, tokens, greeted=False)
        fanned = rounds_of(
            crowd, sockets, rounds, lambda: httpx.post(f"{url}/fanout").raise_for_status()
        )
    return {"memory": memory, "fan_out": fanned}


def ratios_to_bare(ours: dict[str, Any], bare_server: dict[str, Any]) -> dict[str, float]:
    """Fan-out and memory per idle socket of `ours` against bare Flask-SocketIO's (each a
    result with `fan_out` and `memory`, as `bare` returns)."""
    return {
        "fan_out_ratio_to_bare": round(
            ours["fan_out"]["deliveries_per_s_best"]
            / bare_server["fan_out"]["deliveries_per_s_best"],
            3,
        ),
        "memory_ratio_to_bare": round(
            ours["memory"]["kib_per_socket"] / bare_server["memory"]["kib_per_socket"], 3
        ),
    }


def gateway(
    settings: Settings, sockets: int, rounds: int, profiler: Profiler | None
) -> dict[str, Any]:
    runtime = Runtime.build(settings)
    try:
        with runtime.sessions() as session, session.begin():
            app_id = create_app_with_key(session, "bench").app_id
        users = [f"bench-{n}" for n in range(sockets)]
        tokens = [token_for(settings, app_id, user, ttl=3600) for user in users]
        bind = f"127.0.0.1:{free_port()}"
        with socket_crowd() as crowd:
            with running_gateway(settings, bind) as first:
                assert first.service.process is not None
                memory = memory_per_socket(
                    crowd, first.service.process.pid, first.url, tokens, greeted=True
                )
                fanned = rounds_of(
                    crowd,
                    sockets,
                    rounds,
                    lambda: append_to_feed(settings, app_id, users, {"title": "fan-out"}),
                )
                # The notification each socket has last, with its position, before the restart.
                fan_out(crowd, rounds + 1, lambda: notify_each(runtime, settings, app_id, users))
            missed = notify_each(runtime, settings, app_id, users)
            crowd.send({"op": "wait", "received": rounds + 2, "timeout_ms": int(TIMEOUT * 1000)})
            others = {"socket clients": crowd.process.pid}
            cpu_before = cpu.snapshot(others, INFRASTRUCTURE, {})
            restarted = time.monotonic()
            with running_gateway(settings, bind) as second:
                ready = time.monotonic() - restarted
                assert second.service.process is not None
                if profiler is not None:
                    profiler.attach(second.service.process.pid, "storm", subprocesses=True)
                answer = crowd.answer()
                resumed = time.monotonic() - restarted
                # The gateway's from its start: it did not exist before.
                cpu_used = cpu.delta(
                    cpu_before,
                    cpu.snapshot(
                        {"gateway": second.service.process.pid, **others}, INFRASTRUCTURE, {}
                    ),
                )
                profile = profiler.detach() if profiler is not None else {}
            exact = [s["ids"][-1] for s in crowd.state(ids=True)["sockets"]] == missed
    finally:
        runtime.close()
    return {
        "memory": memory,
        "fan_out": fanned,
        "reconnect_storm": {
            "sockets": sockets,
            "resumed": answer["done"],
            "seconds_from_restart": round(resumed, 2),
            "ready_after_s": round(ready, 2),
            "cpu_seconds": cpu_used,
            "each_got_what_it_missed": exact,
            "profile": profile,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="fan-out rounds of each server")
    parser.add_argument("--py-spy", metavar="PATH", help="profile the gateway through the storm")
    args = parser.parse_args()
    profiler = Profiler(args.py_spy, "gateway") if args.py_spy else None

    baseline = bare(args.sockets, args.rounds)
    with isolated_settings() as settings:
        ours = gateway(settings, args.sockets, args.rounds, profiler)
    result = {
        "sockets": args.sockets,
        "bare_flask_socketio": baseline,
        "gateway": ours,
        **ratios_to_bare(ours, baseline),
    }
    record("gateway", result)
    storm = ours["reconnect_storm"]
    print(
        f"\n{args.sockets} sockets, pid {os.getpid()}:\n"
        f"memory per idle socket: gateway {ours['memory']['kib_per_socket']} KiB, "
        f"bare {baseline['memory']['kib_per_socket']} KiB "
        f"(ratio {result['memory_ratio_to_bare']})\n"
        f"fan-out: gateway {ours['fan_out']['deliveries_per_s_best']:.0f}/s, "
        f"bare {baseline['fan_out']['deliveries_per_s_best']:.0f}/s "
        f"(ratio {result['fan_out_ratio_to_bare']})\n"
        f"reconnect storm: {storm['resumed']} of {args.sockets} resumed "
        f"{storm['seconds_from_restart']} s after the restart (ready after "
        f"{storm['ready_after_s']} s); exactly what each missed: "
        f"{storm['each_got_what_it_missed']}; CPU seconds {storm['cpu_seconds']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
