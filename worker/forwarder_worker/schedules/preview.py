"""The next fire times of a schedule, before they happen: its window, run limit and
exclusions honoured, each slot described in the schedule's zone (and whether a DST change
moved it).

One function serves every door: ``status.nextRunTimes`` (the operator's status writer),
``GET /schedules/{ns}/{name}/preview`` and ``forwarder preview FILE`` (offline, no Redis).
A stored entry is previewed from its firing state (its next due time, its interval grid, the
runs it has left); a spec not stored yet is previewed as if it were applied now.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from forwarder_worker.schedules.model import ScheduledTaskSpec
from forwarder_worker.schedules.store import Entry, Meta, StoredEntry, arm
from forwarder_worker.schedules.timing import CRON_ALIASES, utc_iso

NEXT_RUN_TIMES = 5
"""How many fire times ``status.nextRunTimes`` holds."""
MAX_PREVIEW = 1000
"""The most fire times one preview lists (the api's and the CLI's ``count`` cap)."""
PREVIEW_ENTRY = "preview/preview"
"""The entry name a spec that is not stored is previewed under (names do not affect timing)."""


def upcoming(entry: Entry, meta: Meta, due: float | None, count: int) -> list[float]:
    """The next ``count`` fire times of an entry whose next due time is ``due`` (None: it
    never fires again), at most the runs ``maxRuns`` leaves it."""
    if due is None or count <= 0:
        return []
    if entry.max_runs is not None:
        count = min(count, entry.max_runs - meta.count)
    timetable = entry.timetable(meta.anchor)
    # The due time may be a checkpoint in a long exclusion (timing.MAX_EXCLUDED_WALK).
    first = due if timetable.fires(due) else timetable.next_firing(due)
    times = [] if first is None else [first]
    while times and len(times) < count:
        nxt = timetable.next_firing(times[-1])
        if nxt is None:
            break
        times.append(nxt)
    return times[:count]


def preview(
    spec: ScheduledTaskSpec,
    count: int,
    *,
    now: float | None = None,
    stored: StoredEntry | None = None,
) -> list[float]:
    """The next ``count`` fire times of ``spec``: from ``stored`` (its entry as beat fires
    it) when that has the same timing, else as if the spec were applied at ``now``."""
    at = time.time() if now is None else now
    entry = Entry.from_spec(stored.entry.name if stored else PREVIEW_ENTRY, spec)
    if stored is not None and stored.entry.same_timing(entry) and not stored.entry.suspend:
        return upcoming(stored.entry, stored.meta, stored.due, count)
    if spec.suspend:
        return []
    meta, due = arm(entry, None, Meta(anchor=at), None, at)
    return upcoming(entry, meta, due, count)


@dataclass(frozen=True)
class SlotView:
    """One fire time as a person reads it: in the schedule's zone and in UTC, and how a DST
    change moved it (empty when it did not)."""

    at: float
    local: str  # ISO 8601 with the zone's offset
    utc: str
    dst: str

    def as_dict(self) -> dict[str, str | float]:
        """The JSON shape the api serves."""
        out: dict[str, str | float] = {"local": self.local, "utc": self.utc}
        if self.dst:
            out["dst"] = self.dst
        return out


def describe_slot(entry: Entry, at: float) -> SlotView:
    """``at`` in ``entry``'s zone, marking a slot a DST change moved: a cron time in the
    spring-forward gap (shifted forward, or not fired at all: see timing's rules), and a
    time in the fall-back hour, which happens twice (which of the two it is)."""
    zone = ZoneInfo(entry.tz)
    local = datetime.fromtimestamp(at, zone)
    wall = local.replace(tzinfo=None)
    note = ""
    if "cron" in entry.schedule:
        expression = CRON_ALIASES.get(entry.schedule["cron"], entry.schedule["cron"])
        if not croniter.match(expression, wall):
            # Only the spring-forward rule fires a cron off its own wall time.
            gap = _gap_before(at, zone)
            shifted = wall - gap
            note = f"shifted +{_hours(gap)}: {shifted:%H:%M} does not exist on {wall:%Y-%m-%d}"
    other = wall.replace(fold=1 - local.fold).replace(tzinfo=zone)
    if not note and other.utcoffset() != local.utcoffset():
        which = "second" if local.fold else "first"
        note = f"{wall:%H:%M} happens twice on {wall:%Y-%m-%d}: the {which}"
    return SlotView(at, local.isoformat(timespec="seconds"), utc_iso(at) or "", note)


def _gap_before(at: float, zone: ZoneInfo) -> timedelta:
    """How far the zone's offset jumped forward in the hours before ``at``."""
    now = datetime.fromtimestamp(at, zone).utcoffset() or timedelta()
    before = datetime.fromtimestamp(at - 3 * 3600, zone).utcoffset() or timedelta()
    return max(now - before, timedelta())


def _hours(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes // 60}h{minutes % 60:02d}m"
