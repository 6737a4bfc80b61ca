"""Test helpers that run real omnipush services as subprocesses and wait on them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def run_omnipush(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `omnipush` command to completion, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "omnipush", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Service:
    """One `omnipush serve ...` subprocess whose output is kept for assertions."""

    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    frozen: bool = False

    def start(self) -> Service:
        self.lines = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "omnipush", *self.args],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        wait_until(lambda: text in self.output() or self._died(), timeout, f"{text!r} in log")
        if text not in self.output():
            raise AssertionError(f"{self.args} exited:\n{self.output()}")

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def freeze(self) -> None:
        """SIGSTOP the whole process group: it does nothing more until killed, so a test can
        look at the state it left as it was at the kill."""
        assert self.process is not None and self.process.poll() is None, f"{self.args} exited"
        os.killpg(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def working(self) -> bool:
        """Running, and not frozen."""
        return not self.frozen and self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (gunicorn workers included)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def terminate(self) -> None:
        """SIGTERM the process group (and SIGCONT, should it be frozen); see `wait_stopped`."""
        if self.process is not None and self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
                os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL whatever is left after `timeout`."""
        self.terminate()
        return self.wait_stopped(timeout)

    def wait_stopped(self, timeout: float = 20.0) -> int | None:
        """Wait for the process to end after `terminate`; SIGKILL it after `timeout`."""
        if self.process is None:
            return None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode


def wait_http_ok(url: str, timeout: float = 30.0) -> None:
    def ok() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ok, timeout, f"{url} to answer 200", interval=0.1)


#: How long a service of a stack may take to be ready: they start together on a shared machine.
READY_SECONDS = 60.0

SERVICE_ARGS = {
    "api": ["serve", "api"],
    "relay": ["serve", "relay"],
    "dispatcher": ["serve", "dispatcher"],
    "worker-web": ["serve", "worker", "--channel", "web"],
    "gateway": ["serve", "gateway"],
}


@dataclass
class Stack:
    """The services of one pipeline as subprocesses, by name, and where the HTTP ones listen."""

    settings: Settings
    env: dict[str, str]
    services: dict[str, Service] = field(default_factory=dict)
    api_workers: int = 1

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_bind}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.gateway_bind}"

    def start_all(
        self,
        env_of: Mapping[str, Mapping[str, str]] | None = None,
        names: Sequence[str] = tuple(SERVICE_ARGS),
    ) -> None:
        """Start every service (or those of `names`), all at once, and wait until each is
        ready; `env_of` gives some of them variables of their own (by name)."""
        for name in names:
            self._launch(name, (env_of or {}).get(name))
        for name in names:
            self._wait_ready(name)

    def start(self, name: str, env: Mapping[str, str] | None = None) -> Service:
        """Start one service, with `env` over the stack's environment (e.g. a proxy's URL)."""
        service = self._launch(name, env)
        self._wait_ready(name)
        return service

    def _launch(self, name: str, env: Mapping[str, str] | None) -> Service:
        args = list(SERVICE_ARGS[name])
        if name == "api":
            args += ["--workers", str(self.api_workers)]
        service = Service(args=args, env={**self.env, **(env or {})})
        self.services[name] = service
        return service.start()

    def _wait_ready(self, name: str) -> None:
        if name == "api":
            wait_http_ok(f"{self.api_url}/healthz", READY_SECONDS)
        elif name == "gateway":
            wait_http_ok(f"{self.gateway_url}/healthz", READY_SECONDS)
        else:
            self.services[name].wait_for_log("amqp.ready", READY_SECONDS)

    def kill(self, name: str) -> None:
        self.services[name].kill()

    def stop_all(self) -> None:
        # All at once, then wait for each: shutting down is mostly waiting.
        for service in self.services.values():
            service.terminate()
        for service in self.services.values():
            service.wait_stopped()
