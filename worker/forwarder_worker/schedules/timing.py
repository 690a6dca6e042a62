"""When a schedule fires: interval, cron in an IANA time zone (DST-correct) and one-off times,
each bounded by a window and exclusions (:class:`BoundedTimetable`).

All instants are UTC epoch seconds (floats), which is how the due set scores entries.

An interval follows real time: its firings are exactly its length apart whatever the zone's
offset does. A window bounds instants; an exclusion matches a slot's local wall time.

Cron semantics across daylight-saving changes follow Vixie/ISC cron, the behaviour cron users
know, and keep the promise Prefect documents for long schedules (the wall-clock hour stays):

* A cron whose hour field is fixed (``30 2 * * *``, ``0 9-17 * * 1-5``) keeps wall-clock time.
  A local time that does not exist (the spring-forward gap) fires once, shifted forward by
  the length of the gap (02:30 becomes 03:30 on the day New York springs forward). A local
  time that happens twice (fall back) fires once, at its first occurrence.
* A cron whose hour field starts with ``*`` (``0 * * * *``, ``*/15 * * * *``) follows real
  time: it fires at every matching instant that exists, so an hourly job fires exactly once
  per real hour. Across fall back the repeated 01:00 fires twice, an hour apart, once for each
  real hour; across spring forward the nonexistent 02:00 is not an hour that passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple, Protocol
from zoneinfo import ZoneInfo

from croniter import croniter

CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# Offsets change by at most a few hours at a transition; candidates this far apart in wall
# time cannot be reordered by one, which bounds the search below.
_MAX_SHIFT = timedelta(hours=3)
# Bounds the search for a cron that never matches again (e.g. Feb 30).
_HORIZON = timedelta(days=366 * 5)


class Timetable(Protocol):
    """The instants a schedule fires at."""

    def next_after(self, ts: float) -> float | None:
        """The first firing strictly after ``ts``, or None when it never fires again."""


@dataclass(frozen=True)
class IntervalTimetable:
    """Every ``seconds``, on a grid anchored at ``anchor`` (its first firing)."""

    seconds: float
    anchor: float

    def next_after(self, ts: float) -> float:
        if ts < self.anchor:
            return self.anchor
        steps = math.floor((ts - self.anchor) / self.seconds) + 1
        return self.anchor + steps * self.seconds


@dataclass(frozen=True)
class OneOffTimetable:
    """A single firing at ``at``."""

    at: float

    def next_after(self, ts: float) -> float | None:
        return self.at if ts < self.at else None


class CronTimetable:
    """A 5-field cron expression evaluated in an IANA time zone (see the module docstring)."""

    def __init__(self, expression: str, zone: str = "UTC") -> None:
        self.expression = CRON_ALIASES.get(expression.strip(), expression.strip())
        self.zone = ZoneInfo(zone)
        self.follows_wall_clock = not self.expression.split()[1].startswith("*")
        # Parsing the expression is half the cost of a croniter; one is kept and moved to
        # each search's start (a preview asks for several slots in a row).
        self._candidates: croniter | None = None

    def _instants(self, wall: datetime) -> list[float]:
        """The real instants for a naive local wall time, by the module's DST rules."""
        first = wall.replace(tzinfo=self.zone, fold=0)
        second = wall.replace(tzinfo=self.zone, fold=1)
        exists = first.astimezone(UTC).astimezone(self.zone).replace(tzinfo=None) == wall
        if not exists:
            # fold=0 reads a gap time with the offset from before the change, which lands
            # exactly one gap later in real time: the "shift forward" rule.
            return [first.timestamp()] if self.follows_wall_clock else []
        if first.utcoffset() != second.utcoffset() and not self.follows_wall_clock:
            return [first.timestamp(), second.timestamp()]
        return [first.timestamp()]

    def _near_change(self, ts: float) -> bool:
        """Whether the zone's offset changes within ``_MAX_SHIFT`` of ``ts``."""
        shift = _MAX_SHIFT.total_seconds()
        offsets = {
            datetime.fromtimestamp(t, self.zone).utcoffset() for t in (ts - shift, ts, ts + shift)
        }
        return len(offsets) > 1

    def next_after(self, ts: float) -> float | None:
        local = datetime.fromtimestamp(ts, self.zone).replace(tzinfo=None)
        # Only near an offset change can an earlier wall time map to a later instant (or the
        # reverse), so only there is the search widened; elsewhere the first match wins.
        start = local - _MAX_SHIFT if self._near_change(ts) else local
        if self._candidates is None:
            self._candidates = croniter(self.expression, start)
        candidates = self._candidates
        candidates.set_current(start, force=True)
        best: float | None = None
        limit = local + _HORIZON
        while True:
            wall: datetime = candidates.get_next(datetime)
            if wall > limit:
                return best
            for instant in self._instants(wall):
                if instant > ts and (best is None or instant < best):
                    best = instant
            if best is not None:
                if not self._near_change(best):
                    return best
                limit = datetime.fromtimestamp(best, self.zone).replace(tzinfo=None) + _MAX_SHIFT


# Bounds the excluded slots one step walks past (a minutely cron excluded for a weekend is
# 2,880; an every-1s one, 172,800): a step stops there at a checkpoint, an excluded slot that
# beat arms like a slot and steps on from when it falls due, so beat never spends more than
# a fraction of a second on one entry, and a long exclusion is never taken for the end.
MAX_EXCLUDED_WALK = 2_000
# Checkpoints a preview walks through before it gives up looking (MAX_EXCLUDED_WALK slots
# each): exclusions that leave no slot for that long end a preview early.
MAX_CHECKPOINTS = 50


class Step(NamedTuple):
    """Where a step of a bounded timetable lands."""

    slot: float | None  # the next slot to arm (None: no slot left)
    excluded: int  # excluded slots stepped over on the way (the checkpoint included)
    fires: bool  # False: a checkpoint, an excluded slot to step on from (or no slot)


@dataclass(frozen=True)
class Exclusions:
    """Slots that do not fire: those whose local wall time (in ``zone``) matches one of
    ``crons`` (to the minute), or falls on one of ``dates``."""

    zone: str
    crons: tuple[str, ...] = ()
    dates: frozenset[date] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.crons or self.dates)

    def excludes(self, ts: float) -> bool:
        """Whether the slot at ``ts`` is excluded."""
        local = datetime.fromtimestamp(ts, ZoneInfo(self.zone)).replace(tzinfo=None)
        if local.date() in self.dates:
            return True
        return any(croniter.match(CRON_ALIASES.get(expr, expr), local) for expr in self.crons)


@dataclass(frozen=True)
class BoundedTimetable:
    """A timetable limited to ``[start, end)`` and without its excluded slots.

    :meth:`step` also says how many excluded slots it stepped over, which beat counts."""

    base: Timetable
    start: float | None = None
    end: float | None = None
    exclusions: Exclusions | None = None

    def step(self, ts: float) -> Step:
        """The first slot strictly after ``ts`` that fires, and the excluded slots before it;
        or, after MAX_EXCLUDED_WALK excluded ones, the last of them as a checkpoint."""
        after = ts
        if self.start is not None and after < self.start:
            # The first slot at or after the start: step from just before it.
            after = math.nextafter(self.start, -math.inf)
        excluded = 0
        while True:
            slot = self.base.next_after(after)
            if slot is None or (self.end is not None and slot >= self.end):
                return Step(None, excluded, False)
            if not self.exclusions or not self.exclusions.excludes(slot):
                return Step(slot, excluded, True)
            excluded += 1
            if excluded >= MAX_EXCLUDED_WALK:
                return Step(slot, excluded, False)
            after = slot

    def fires(self, slot: float) -> bool:
        """Whether ``slot`` (one of the base timetable's) fires: inside the window and not
        excluded."""
        if (self.start is not None and slot < self.start) or (
            self.end is not None and slot >= self.end
        ):
            return False
        return not self.exclusions or not self.exclusions.excludes(slot)

    def next_after(self, ts: float) -> float | None:
        """The next slot to arm after ``ts``: one that fires, or a checkpoint."""
        return self.step(ts).slot

    def next_firing(self, ts: float) -> float | None:
        """The first slot strictly after ``ts`` that fires, through checkpoints (None: none
        within MAX_CHECKPOINTS of them)."""
        for _ in range(MAX_CHECKPOINTS):
            step = self.step(ts)
            if step.slot is None or step.fires:
                return step.slot
            ts = step.slot
        return None


def parse_dates(values: Iterable[str]) -> frozenset[date]:
    """``YYYY-MM-DD`` strings as dates (ValueError names the first bad one)."""
    found = set()
    for value in values:
        try:
            found.add(date.fromisoformat(value))
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a date like 2026-12-25") from None
    return frozenset(found)


def utc_iso(ts: float | None, *, ms: bool = False) -> str | None:
    """An epoch instant as RFC 3339 UTC with a ``Z``, as Kubernetes writes times: to the
    second, or with ``ms`` to the millisecond (a run's times, whose gaps are durations and
    lateness, mostly under a second)."""
    if ts is None:
        return None
    spec = "milliseconds" if ms else "seconds"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=spec).replace("+00:00", "Z")
