"""What the stages that keep their state in Redis share: one Lua call per delivery, all of a
batch's in one round trip, and what happens while Redis cannot be reached.

By default a Redis stage that cannot reach Redis raises, so the dispatcher sends nothing
unchecked: its batch is rolled back and kept unacked in the broker, and retried with back-off
until Redis is back (`shared.amqp.consumer`). A stage listed in the operator's
`[policy] fail_open` lets every delivery through unchecked instead, and says so once when that
begins and once when it ends.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dispatcher.stages.base import Candidate, Stage, Verdict
from shared.batched_script import BatchedScript

log = structlog.get_logger(__name__)


def digest(*parts: str) -> str:
    """A short, stable digest of what a key is about (no address is ever a key in clear)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class RedisStage(Stage):
    """A stage whose check-and-count is one Lua script (`SCRIPT`) per delivery: it answers 1
    when the delivery is stopped, 0 when it goes on (and was counted)."""

    SCRIPT: str

    def __init__(self, client: redis.Redis, prefix: str, fail_open: bool = False) -> None:
        self.client = client
        self.prefix = prefix
        self.fail_open = fail_open
        self._script = BatchedScript(self.SCRIPT)
        self._unchecked = False

    @abstractmethod
    def call_of(self, candidate: Candidate) -> tuple[list[str], list[Any]] | None:
        """The script's keys and arguments for `candidate`, or None when it is not checked."""

    @abstractmethod
    def verdict(self, candidate: Candidate) -> Verdict:
        """What becomes of a delivery the script stopped."""

    def decide(self, candidates: Sequence[Candidate], now: datetime) -> list[Verdict | None]:
        verdicts: list[Verdict | None] = [None] * len(candidates)
        calls = [(i, call) for i, c in enumerate(candidates) if (call := self.call_of(c))]
        if not calls:
            return verdicts
        try:
            answers = self._script.run(self.client, [call for _i, call in calls])
        except (RedisConnectionError, RedisTimeoutError) as error:
            if not self.fail_open:
                raise
            if not self._unchecked:
                self._unchecked = True
                log.warning("policy.unchecked", stage=self.name, detail=str(error))
            return verdicts
        if self._unchecked:
            self._unchecked = False
            log.info("policy.checked", stage=self.name)
        for (i, _call), answer in zip(calls, answers, strict=True):
            if int(answer) == 1:
                verdicts[i] = self.verdict(candidates[i])
        return verdicts
