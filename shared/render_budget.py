"""What rendering templates may spend: steps, characters made, output bytes and time.

A template is a small program an app hands to the API, which runs it while a caller waits. So a
request gets a `RenderBudget`: its messages together may spend `REQUEST_LIMITS`, and each of them
(one `render_parts`) at most `MESSAGE_LIMITS`. The sandbox reports to the `Meter` of the field
being rendered (a context variable, so concurrent requests keep their own): a step for every loop
iteration, call and filter, and the size of every value and output it makes. Steps and sizes
are counted, so a template trips the same limit wherever it runs; the time limit is a backstop
for steps that are slow without being many, so that no template holds a request for long.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from time import monotonic


@dataclass(frozen=True)
class Limits:
    """`steps`: loop iterations, calls and filters; `made`: characters of the values and output
    made along the way (what memory a template churns through); `output`: UTF-8 bytes of the
    rendered fields (what is stored); `seconds`: time spent rendering."""

    steps: int
    made: int
    output: int
    seconds: float


# A step costs from a fraction of a microsecond (an empty iteration) to some (a macro call), so
# the step limits trip well before the time limits do, on a loaded machine too.
MESSAGE_LIMITS = Limits(steps=50_000, made=2_000_000, output=256 * 1024, seconds=2.0)
REQUEST_LIMITS = Limits(steps=250_000, made=20_000_000, output=4 * 1024 * 1024, seconds=5.0)


class OverBudget(Exception):
    """A limit ran out while rendering; `str(error)` says which (`takes more than ... steps`)."""


class _Tally:
    """What has been spent against one `Limits`, and the words for running out of it."""

    def __init__(self, limits: Limits, scope: str) -> None:
        self.limits = limits
        self.scope = scope
        self.steps = self.made = self.output = 0
        self.seconds = 0.0

    def over(self, what: str) -> OverBudget:
        limits = self.limits
        said = {
            "steps": f"takes more than {limits.steps} steps (loop iterations, calls and filters)",
            "made": f"makes more than {limits.made} characters along the way",
            "output": f"renders to more than {limits.output} bytes",
            "seconds": f"takes more than {limits.seconds:g} s to render",
        }[what]
        return OverBudget(f"{said} {self.scope}")


class Meter:
    """The budget of the field being rendered: what is left of the message's and the request's
    limits, whichever is tighter, and whose limit that is."""

    __slots__ = (
        "_budgeted",
        "_made_by",
        "_started",
        "_steps_by",
        "_time_by",
        "deadline",
        "made",
        "steps",
    )

    def __init__(self, tallies: tuple[_Tally, ...]) -> None:
        self._steps_by = min(tallies, key=lambda t: t.limits.steps - t.steps)
        self._made_by = min(tallies, key=lambda t: t.limits.made - t.made)
        self._time_by = min(tallies, key=lambda t: t.limits.seconds - t.seconds)
        self.steps = self._steps_by.limits.steps - self._steps_by.steps
        self.made = self._made_by.limits.made - self._made_by.made
        self._budgeted = (self.steps, self.made)
        self._started = monotonic()
        self.deadline = self._started + self._time_by.limits.seconds - self._time_by.seconds

    def step(self) -> None:
        """One loop iteration, call or filter."""
        self.steps -= 1
        if self.steps < 0:
            raise self._steps_by.over("steps")
        if monotonic() > self.deadline:
            raise self._time_by.over("seconds")

    def make(self, size: int) -> None:
        """A value or output of `size` characters was made."""
        self.made -= size
        if self.made < 0:
            raise self._made_by.over("made")

    def spent(self) -> tuple[int, int, float]:
        """Steps, characters and seconds spent since this meter started."""
        steps, made = self._budgeted
        return steps - self.steps, made - self.made, monotonic() - self._started


_CURRENT: ContextVar[Meter | None] = ContextVar("omnipush_template_meter", default=None)


def current_meter() -> Meter | None:
    """The meter of the field being rendered here, if any (compiling has none)."""
    return _CURRENT.get()


class MessageBudget:
    """One message's share of a `RenderBudget`: its fields are rendered under `metering()` and
    their sizes spent with `add_output`."""

    def __init__(self, tallies: tuple[_Tally, ...]) -> None:
        self._tallies = tallies

    @contextmanager
    def metering(self) -> Iterator[Meter]:
        """A meter current while one field renders; what it spent is then added to both limits."""
        meter = Meter(self._tallies)
        token = _CURRENT.set(meter)
        try:
            yield meter
        finally:
            _CURRENT.reset(token)
            steps, made, seconds = meter.spent()
            for tally in self._tallies:
                tally.steps += steps
                tally.made += made
                tally.seconds += seconds

    def add_output(self, size: int) -> None:
        """A field rendered to `size` bytes; `OverBudget` when the message or request has more."""
        for tally in self._tallies:
            tally.output += size
        for tally in self._tallies:
            if tally.output > tally.limits.output:
                raise tally.over("output")


class RenderBudget:
    """What one request may spend rendering its templates (see the module's docstring)."""

    def __init__(self, request: Limits = REQUEST_LIMITS, message: Limits = MESSAGE_LIMITS) -> None:
        self._request = _Tally(request, "in all the request's messages")
        self._message_limits = message

    def message(self) -> MessageBudget:
        """The budget of the next message's templates."""
        return MessageBudget((_Tally(self._message_limits, "in one message"), self._request))
