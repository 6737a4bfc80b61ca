"""A Lua script called many times in one Redis round trip.

redis-py's `Script` run in a pipeline asks Redis whether its scripts are loaded (SCRIPT
EXISTS) before every pipeline, which costs a round trip of its own per batch. A
`BatchedScript` loads its script once and sends EVALSHA for every call; a Redis that lost the
script since (a restart, SCRIPT FLUSH) answers NOSCRIPT to those calls, none of which ran, so
the script is loaded again and they are sent once more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

#: One call: its keys and its arguments.
Call = tuple[Sequence[str], Sequence[Any]]


class BatchedScript:
    """One Lua script, run for a batch of calls per round trip (see the module docstring)."""

    def __init__(self, source: str) -> None:
        self.source = source
        # The name Redis knows the script by (EVALSHA).
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._loaded = False

    def run(
        self, client: redis.Redis, calls: Sequence[Call], *, raise_on_error: bool = True
    ) -> list[Any]:
        """Each call's answer, in order. With `raise_on_error` False an answer may be the
        error Redis gave that call; otherwise the first such error is raised. Connection
        errors are raised either way."""
        if not calls:
            return []
        if not self._loaded:
            client.script_load(self.source)
            self._loaded = True
        answers = self._pipelined(client, calls)
        lost = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
        if lost:
            client.script_load(self.source)
            again = self._pipelined(client, [calls[i] for i in lost])
            for i, answer in zip(lost, again, strict=True):
                answers[i] = answer
        if raise_on_error:
            for answer in answers:
                if isinstance(answer, Exception):
                    raise answer
        return answers

    def _pipelined(self, client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self.sha, len(keys), *keys, *args)
        return list(pipe.execute(raise_on_error=False))
