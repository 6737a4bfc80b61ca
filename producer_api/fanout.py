"""Per-app limits on fan-out: how many recipients one request, one minute and one topic may hold.

One batch could ask for half a million deliveries, and a topic could grow without end. Each app
has three limits, its own (`omnipush apps limit`) or the defaults of the settings:

- recipients per request: the `to` entries of a message, or of all the messages of a batch,
  with a topic counted as its subscribers at acceptance (over it: 422, nothing is stored);
- recipients per minute, counted the same way across every API process in one Redis counter
  per app and minute of Redis's clock (over it: 429 with `Retry-After`);
- subscribers per topic (a subscribe that would pass it: 422, nobody is added).

A topic is counted as it is when the message is accepted; it can only grow up to its own limit
by dispatch time. As the rate limiter does (`producer_api.rate_limit`), each process takes a
share of the minute's allowance at a time and spends it locally, so most messages cost no Redis
round trip; a share left unspent makes the limit slightly stricter, never looser. And as there,
the counter is protection, not bookkeeping: when Redis cannot be reached, messages pass.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from flask import Flask, current_app
from sqlalchemy.orm import Session

from producer_api.api_keys import KeyOwner
from shared.best_effort_redis import BestEffortRedis
from shared.blueprint import fail
from shared.models import App
from shared.runtime import Runtime
from shared.settings import Settings

EXTENSION = "omnipush.fanout"

# KEYS[1] the app's counter (the minute is appended); ARGV needed, wanted, limit. Grants
# between `needed` and `wanted` recipients of this minute's allowance, or 0 and the seconds
# until the next minute.
_MINUTE_ALLOWANCE = """
local clock = redis.call('TIME')
local second = tonumber(clock[1])
local key = KEYS[1] .. ':' .. math.floor(second / 60)
local used = tonumber(redis.call('GET', key) or '0')
local available = tonumber(ARGV[3]) - used
if available < tonumber(ARGV[1]) then
  return {0, 60 - second % 60}
end
local granted = math.min(tonumber(ARGV[2]), available)
redis.call('INCRBY', key, granted)
redis.call('EXPIRE', key, 120)
return {granted, 0}
"""
#: The most recipients one process takes from an app's minute at once, and for how long.
SHARE_MAX = 1000
SHARE_SECONDS = 1.0


@dataclass(frozen=True)
class FanoutLimits:
    """One app's fan-out limits."""

    per_request: int
    per_minute: int
    topic_subscribers: int

    @classmethod
    def defaults(cls, settings: Settings) -> FanoutLimits:
        return cls(
            settings.max_recipients_per_request,
            settings.max_recipients_per_minute,
            settings.max_topic_subscribers,
        )


def check_fanout_limits(*limits: int | None) -> None:
    """ValueError unless every limit given is at least 1."""
    if any(limit is not None and limit < 1 for limit in limits):
        raise ValueError("a fan-out limit must be at least 1")


def set_fanout_limits(
    session: Session,
    app_id: str,
    per_request: int | None,
    per_minute: int | None,
    topic_subscribers: int | None,
) -> bool:
    """Give an app its own fan-out limits (None: the default); False when there is no such app."""
    check_fanout_limits(per_request, per_minute, topic_subscribers)
    app = session.get(App, app_id)
    if app is None:
        return False
    app.max_recipients_per_request = per_request
    app.max_recipients_per_minute = per_minute
    app.max_topic_subscribers = topic_subscribers
    return True


@dataclass
class _Share:
    recipients: int
    until: float


class MinuteAllowance:
    """Recipients per app and minute, shared by every API process through Redis."""

    def __init__(self, redis: BestEffortRedis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._script = redis.client.register_script(_MINUTE_ALLOWANCE)
        self._shares: dict[str, _Share] = {}
        self._lock = threading.Lock()  # guards the shares only, never held across Redis

    def retry_after(self, app_id: str, recipients: int, limit: int) -> int | None:
        """None when `recipients` more fit in this minute (they are counted), else whole
        seconds until the next minute."""
        now = time.monotonic()
        with self._lock:
            share = self._shares.get(app_id)
            if share is not None and share.until > now and share.recipients >= recipients:
                share.recipients -= recipients
                return None
        wanted = max(recipients, min(SHARE_MAX, limit // 20))
        answer = self.redis.call(
            "fan-out limits",
            lambda _client: self._script(
                keys=[f"{self.prefix}:fanout:{app_id}"], args=[recipients, wanted, limit]
            ),
            fallback=None,
        )
        if answer is None:
            return None
        granted, wait = answer
        if int(granted) < recipients:
            return max(1, int(wait))
        with self._lock:
            self._shares[app_id] = _Share(int(granted) - recipients, now + SHARE_SECONDS)
        return None


class FanoutGuard:
    """Holds each request to its app's fan-out limits; see the module docstring.

    An app's own limits come with its API key's owner (`KeyOwner`), read in the same look-up
    and cached as long, so a change made with `omnipush apps limit` reaches running APIs as
    soon as a changed rate limit does.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.defaults = FanoutLimits.defaults(runtime.settings)
        self.allowance = MinuteAllowance(runtime.best_effort_redis, runtime.settings.queue_prefix)

    def limits(self, owner: KeyOwner) -> FanoutLimits:
        return FanoutLimits(
            owner.max_recipients_per_request or self.defaults.per_request,
            owner.max_recipients_per_minute or self.defaults.per_minute,
            owner.max_topic_subscribers or self.defaults.topic_subscribers,
        )

    def admit(self, owner: KeyOwner, recipients: int, field: str = "to") -> None:
        """Count a request's recipients against its app's limits, or refuse it (422 naming
        `field`, or 429)."""
        limits = self.limits(owner)
        app_id = owner.app_id
        for limit, per in ((limits.per_request, "request"), (limits.per_minute, "minute")):
            if recipients > limit:
                refused = (
                    f"This request asks for {recipients} recipients (a topic counts its "
                    f"subscribers), over this app's limit of {limit} recipients per {per}."
                )
                fail(422, refused, errors={field: [refused]})
        wait = self.allowance.retry_after(app_id, recipients, limits.per_minute)
        if wait is not None:
            fail(
                429,
                f"Over this app's limit of {limits.per_minute} recipients per minute; "
                f"retry after {wait} s.",
                headers={"Retry-After": str(wait)},
            )

    def admit_subscribers(self, owner: KeyOwner, topic: str, subscribers: int) -> None:
        """Refuse (422) a topic that would have more subscribers than its app allows."""
        limit = self.limits(owner).topic_subscribers
        if subscribers > limit:
            refused = (
                f"Topic {topic} would have {subscribers} subscribers, over this app's limit "
                f"of {limit} subscribers per topic."
            )
            fail(422, refused, errors={"user_ids": [refused]})


def install_fanout_guard(app: Flask, guard: FanoutGuard) -> None:
    app.extensions[EXTENSION] = guard


def fanout_guard() -> FanoutGuard:
    """The current app's guard."""
    guard: FanoutGuard = current_app.extensions[EXTENSION]
    return guard
