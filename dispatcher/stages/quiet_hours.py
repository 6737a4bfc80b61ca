"""Stage 6: nothing non-urgent reaches a recipient inside their quiet hours; it waits.

Quiet hours are local times (`{"start": "22:00", "end": "07:00"}`, crossing midnight when the
start is later than the end) in the user's time zone (UTC when they have none). A delivery
inside the window is `deferred` to its end: its outbox row becomes due then, so it is released
on time by whichever relay is running, across restarts. Wall-clock times are turned into
instants with the zone's rules for that very day: a window that ends at 02:30 on the night
the clocks go forward past 02:30 ends at the same instant as 03:30 would, and on the night they
go back, an hour that happens twice ends at its first occurrence.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dispatcher.stages.base import Candidate, PerDeliveryStage, Verdict

#: The categories that wait for the end of quiet hours (verification codes never do).
QUIETED = frozenset({"notification", "marketing"})


def _clock(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def _instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def quiet_until(now: datetime, zone_name: str | None, start: str, end: str) -> datetime | None:
    """The end (in UTC) of the quiet hours `start`-`end` that `now` falls in, in `zone_name`;
    None when `now` is outside them (or they are empty: start equal to end)."""
    if start == end:
        return None
    try:
        zone = ZoneInfo(zone_name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    begins, ends = _clock(start), _clock(end)
    today = now.astimezone(zone).date()
    # The window that began yesterday may still be open; the one that begins today may be.
    for day in (today - timedelta(days=1), today):
        opened = _instant(day, begins, zone)
        closes = _instant(day + timedelta(days=1) if begins > ends else day, ends, zone)
        if opened <= now < closes:
            return closes
    return None


class QuietHours(PerDeliveryStage):
    """`deferred` to the end of the user's quiet hours for a `notification` or `marketing`
    delivery that is not `high` priority."""

    name = "quiet_hours"

    def decide_one(self, candidate: Candidate, now: datetime) -> Verdict | None:
        facts = candidate.recipient
        message = candidate.message
        if facts is None or facts.quiet_hours is None:
            return None
        if message.category not in QUIETED or message.priority == "high":
            return None
        until = quiet_until(
            now, facts.timezone, facts.quiet_hours["start"], facts.quiet_hours["end"]
        )
        if until is None:
            return None
        return Verdict("deferred", f"quiet hours until {until.isoformat()}", release_at=until)
