"""py-spy for benchmarks: record one process while a phase is timed, and say where its samples
went."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench.results import RESULTS


class Profiler:
    """py-spy recording one process while it is timed; collapsed stacks to var/."""

    def __init__(self, executable: str, bench: str) -> None:
        self.executable = executable
        self.bench = bench
        self.process: subprocess.Popen[bytes] | None = None
        self.output = Path()

    def attach(self, pid: int, label: str, *, subprocesses: bool = False) -> None:
        """Record `pid` (and the processes under it, if `subprocesses`) until `detach`."""
        self.output = RESULTS / f"bench-{self.bench}-{label}.pyspy.txt"
        RESULTS.mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            [
                *(self.executable, "record", "--pid", str(pid), "--rate", "200"),
                *("--format", "raw", "--output", str(self.output), "--nonblocking"),
                *(["--subprocesses"] if subprocesses else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def detach(self) -> dict[str, Any]:
        """Stop recording; where the samples went (`summarize`), and where the stacks are."""
        if self.process is None:
            return {}
        self.process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        self.process.wait(60)
        self.process = None
        return {"stacks": str(self.output), **summarize(self.output)}


def summarize(path: Path, limit: int = 20) -> dict[str, dict[str, float]]:
    """Where the samples of py-spy's collapsed stacks at `path` went: by the package of the
    innermost frame (the code that was running), and for omnipush's own functions the share
    of samples each was on the stack in (inclusive)."""
    leaves: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue  # py-spy now and then reads a frame's name torn (a line break in it)
        samples = int(count)
        total += samples
        frames = stack.split(";")
        leaves[_package(frames[-1])] += samples
        for name in {_name(frame) for frame in frames if _package(frame) in OMNIPUSH}:
            ours[name] += samples
    if not total:
        return {}
    return {
        "running_by_package": {k: round(n / total, 3) for k, n in leaves.most_common(limit)},
        "omnipush_on_stack": {k: round(n / total, 3) for k, n in ours.most_common(limit)},
    }


#: The packages whose functions `summarize` lists one by one.
OMNIPUSH = frozenset({"dispatcher", "shared", "channels", "ws_gateway", "producer_api"})


def _where(frame: str) -> str:
    """The file of a collapsed frame `name (path/to/file.py:12)`."""
    return frame.rpartition(" (")[2].rstrip(")").rpartition(":")[0]


def _package(frame: str) -> str:
    path = _where(frame)
    return path.split("/")[0].removesuffix(".py") if "/" in path else path.removesuffix(".py")


def _name(frame: str) -> str:
    return f"{frame.rpartition(' (')[0]} ({_where(frame)})"
