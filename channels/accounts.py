"""Provider accounts shared by every worker process: rate limits, slow-downs and breakers.

A provider account (an SMS account, the SMTP server, FCM, one webhook endpoint) is what a
provider limits and what fails as a whole. Its state lives in Redis so that every worker of the
channel agrees on it:

- a token bucket of `rate` sends per second (burst: one second's worth), one Lua script;
- a pause: after a provider's 429 with `Retry-After`, nobody calls the account until it ends;
- a breaker: after `failures` transient failures in a row the account is skipped for
  `open_seconds`; the first failure after that re-opens it at once, a success closes it.

`send_through` is the one loop every adapter uses: accounts in weighted random order, skipping
those that may not be called now, failing over to the next on a transient failure or a
slow-down, and deferring the delivery (no attempt used up) when none may be called.

These are protections, not what a send needs: when Redis does not answer within its
best-effort timeout, every account may be called (`shared.best_effort_redis`). For the same
reason an account without a `rate` that Redis found clear is taken as clear for
`CLEAR_SECONDS` without asking again: a pause or a breaker that another worker sets reaches
this one that much later, and a healthy account costs Redis a call per worker every
`CLEAR_SECONDS` rather than one per send. This worker's own failures and pauses end it at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import redis

from channels.base import Outcome, Result
from shared.best_effort_redis import BestEffortRedis
from shared.config_file import Account, BreakerConfig

# KEYS: bucket, paused, open, failures, tripped.  ARGV: rate per second (0: unlimited).
# Returns milliseconds to wait, or when the caller may send now (and takes a token) 0, or -1
# if the account has failures or a recent trip on record, which its next success clears.
_ADMIT = """
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return paused end
local open = redis.call('PTTL', KEYS[3])
if open > 0 then return open end
local go = 0
if redis.call('EXISTS', KEYS[4], KEYS[5]) > 0 then go = -1 end
local rate = tonumber(ARGV[1])
if rate <= 0 then return go end
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local burst = math.max(1, rate)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
if wait == 0 then return go end
return wait
"""

# KEYS: failures, open, tripped.  ARGV: failures to open, open ms.
# Returns 1 when this failure opened the breaker.
_FAILED = """
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('INCR', KEYS[1]) >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  redis.call('SET', KEYS[3], '1', 'PX', tonumber(ARGV[2]) * 10)
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return 0
"""


#: How long an account without a rate that Redis found clear is not asked about again.
CLEAR_SECONDS = 0.1


@dataclass(frozen=True)
class OpenBreaker:
    """An account nobody calls for now, and for how long yet."""

    channel: str
    account: str
    seconds_left: float


class AccountGate:
    """The shared state of one channel's provider accounts; see the module docstring."""

    def __init__(
        self,
        redis_client: BestEffortRedis,
        prefix: str,
        channel: str,
        breaker: BreakerConfig,
    ) -> None:
        self.redis = redis_client
        self.channel = channel
        self.breaker = breaker
        self._base = f"{prefix}:account:{channel}:"
        self._admit: Callable[..., int] | None = None
        self._failed: Callable[..., int] | None = None
        # Accounts admitted with failures on record: only their successes need a round trip
        # to clear them, so that a healthy account costs one Redis call per send, not two.
        self._to_clear: set[str] = set()
        self._clear_until: dict[str, float] = {}

    def _key(self, account: Account, what: str) -> str:
        return f"{self._base}{account.name}:{what}"

    def admit(self, account: Account) -> float:
        """0 when `account` may be called now (a token is taken), else seconds to wait."""
        unlimited = not account.rate
        if unlimited and self._clear_until.get(account.name, 0.0) > time.monotonic():
            return 0.0

        def admit(client: redis.Redis) -> float:
            if self._admit is None:
                self._admit = client.register_script(_ADMIT)
            keys = [
                self._key(account, k) for k in ("bucket", "paused", "open", "failures", "tripped")
            ]
            waited = int(self._admit(keys=keys, args=[account.rate or 0], client=client))
            if waited < 0:
                self._to_clear.add(account.name)
                return 0.0
            if waited == 0 and unlimited:
                self._clear_until[account.name] = time.monotonic() + CLEAR_SECONDS
            return waited / 1000

        return self.redis.call("account admit", admit, 0.0)

    def report(self, account: Account, result: Result) -> None:
        """Count `result` against the account: a slow-down pauses it, a transient failure
        counts towards its breaker, anything else (the account answered) closes it."""
        if result.outcome is Outcome.DEFERRED and result.retry_after:
            self.pause(account, result.retry_after)
        elif result.outcome is Outcome.TRANSIENT:
            self._clear_until.pop(account.name, None)
            self._count_failure(account)
        elif account.name in self._to_clear:
            self._to_clear.discard(account.name)
            self.redis.call(
                "account succeeded",
                lambda client: client.delete(
                    self._key(account, "failures"), self._key(account, "tripped")
                ),
                0,
            )

    def pause(self, account: Account, seconds: float) -> None:
        """Nobody calls `account` for `seconds` (a provider's `Retry-After`)."""
        self._clear_until.pop(account.name, None)
        milliseconds = max(1, round(seconds * 1000))
        self.redis.call(
            "account pause",
            lambda client: client.set(self._key(account, "paused"), "1", px=milliseconds),
            None,
        )

    def _count_failure(self, account: Account) -> None:
        def failed(client: redis.Redis) -> int:
            if self._failed is None:
                self._failed = client.register_script(_FAILED)
            keys = [self._key(account, k) for k in ("failures", "open", "tripped")]
            args = [self.breaker.failures, round(self.breaker.open_seconds * 1000)]
            return int(self._failed(keys=keys, args=args, client=client))

        self.redis.call("account failed", failed, 0)


def open_breakers(client: redis.Redis, prefix: str) -> list[OpenBreaker]:
    """Every open breaker of every channel, for `omnipush stats`."""
    found = []
    base = f"{prefix}:account:"
    for key in client.scan_iter(match=f"{base}*:open", count=500):
        name = key.decode() if isinstance(key, bytes) else str(key)
        channel, _, rest = name[len(base) :].partition(":")
        account = rest.rsplit(":", 1)[0]
        left = client.pttl(key)
        if isinstance(left, int) and left > 0:
            found.append(OpenBreaker(channel, account, left / 1000))
    return sorted(found, key=lambda b: (b.channel, b.account))


def weighted_order(accounts: Sequence[Account], chooser: random.Random) -> list[Account]:
    """`accounts` in a random order where each comes first in proportion to its weight."""
    left = list(accounts)
    ordered = []
    while left:
        (picked,) = chooser.choices(left, weights=[a.weight for a in left])
        ordered.append(picked)
        left.remove(picked)
    return ordered


def send_through(
    gate: AccountGate,
    accounts: Sequence[Account],
    attempt: Callable[[Account], Result],
    chooser: random.Random | None = None,
) -> Result:
    """One delivery through the first account that may be called and does not fail
    transiently; see the module docstring. The result names the account that answered."""
    waits: list[float] = []
    last: Result | None = None
    for account in weighted_order(accounts, chooser or random.Random()):
        wait = gate.admit(account)
        if wait > 0:
            waits.append(wait)
            continue
        result = replace(attempt(account), account=account.name)
        gate.report(account, result)
        if result.outcome in (Outcome.SENT, Outcome.PERMANENT):
            return result
        if result.outcome is Outcome.DEFERRED and result.retry_after:
            waits.append(result.retry_after)
        last = result
    if last is not None and last.outcome is Outcome.TRANSIENT:
        return last
    if not accounts:
        return Result.permanent(f"no {gate.channel} provider account is configured")
    soonest = min(waits) if waits else 1.0
    detail = last.detail if last is not None else "every account is paused, busy or failing"
    return Result.deferred(detail or "deferred", retry_after=soonest)
