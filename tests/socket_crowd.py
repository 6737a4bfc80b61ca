"""Many browsers in one Node.js process (`socket_crowd.js`): official socket.io-client sockets,
driven one command at a time, so that tests and benchmarks can hold thousands of sockets
without a thread each. The process is the caller's own and ends with it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

SCRIPT = Path(__file__).with_name("socket_crowd.js")


class SocketCrowd:
    """A running crowd of sockets; see `socket_crowd.js` for what each command answers."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            ["node", str(SCRIPT)],
            cwd=SCRIPT.parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, command: dict[str, Any]) -> None:
        """Give a command; its answer comes with the next `answer()`."""
        stdin: IO[str] | None = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()

    def answer(self) -> dict[str, Any]:
        """The answer to the oldest command not answered yet."""
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the socket crowd ended (exit {self.process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        self.send(command)
        return self.answer()

    def open(
        self, url: str, tokens: list[str], *, reconnect: bool, timeout: float, greeted: bool = False
    ) -> int:
        """Open a socket per token; how many are connected once all are, or at the timeout.
        With `greeted`, a socket counts once the gateway has also sent its unread count, the end
        of the replay that follows a connect."""
        command = {
            "op": "open",
            "url": url,
            "tokens": tokens,
            "reconnect": reconnect,
            "greeted": greeted,
        }
        return int(self.ask({**command, "timeout_ms": int(timeout * 1000)})["connected"])

    def state(self, *, ids: bool = False) -> dict[str, Any]:
        return self.ask({"op": "state", "ids": ids})

    def close(self) -> None:
        if self.process.poll() is None:
            with suppress(RuntimeError, BrokenPipeError):
                self.ask({"op": "close"})
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextmanager
def socket_crowd() -> Iterator[SocketCrowd]:
    crowd = SocketCrowd()
    try:
        yield crowd
    finally:
        crowd.close()
