"""DST as a property: over many zones, cron expressions and years, the timetables keep the
rule timing.py's docstring and docs/scheduling.md state.

* Fire times strictly increase, whatever the zone does.
* Across a fall-back, a fixed-hour cron fires each wall-clock slot at most once (at its
  first occurrence); a cron whose hour field starts with ``*`` fires each real instant at
  most once (the repeated hour's slots once per real hour).
* Across a spring-forward, a fixed-hour cron fires a slot that does not exist once, shifted
  forward by the gap; an hour-``*`` cron does not fire it.
* An interval follows real time: consecutive firings are exactly its length apart.

The last three are checked against a brute force of the rule: every matching wall time of
the days around a transition, mapped to instants by the rule, compared with what
``next_after`` walks to (which searches near transitions only, so the brute force is an
independent account of the same rule).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter
from forwarder_worker.schedules.timing import CronTimetable, IntervalTimetable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Zones with every kind of change: 1 h forward and back either side of the equator, at
# midnight (Havana, Santiago), 30 minutes (Lord Howe), 45-minute offsets (Chatham),
# "negative" DST in the tz database (Dublin), a zone that stopped DST (Tehran, 2022), none.
ZONES = [
    "America/New_York",
    "America/Los_Angeles",
    "Europe/Helsinki",
    "Europe/London",
    "Europe/Dublin",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "America/Santiago",
    "America/Havana",
    "Pacific/Chatham",
    "America/St_Johns",
    "Asia/Tehran",
    "UTC",
]
MINUTES = ["0", "30", "15,45", "*/20", "5", "59"]
FIXED_HOURS = ["0", "1", "2", "3", "1-3", "0-23/3", "2,14", "23"]
ANY_HOURS = ["*", "*/2", "*/3"]

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def transitions(zone: ZoneInfo, year: int) -> list[float]:
    """The instants in ``year`` at which ``zone``'s UTC offset changes."""
    start = datetime(year, 1, 1, tzinfo=UTC).timestamp()
    found, step = [], 6 * 3600.0
    before = datetime.fromtimestamp(start, zone).utcoffset()
    t = start
    while t < start + 366 * 86400:
        after = datetime.fromtimestamp(t + step, zone).utcoffset()
        if after != before:
            lo, hi = int(t), int(t + step)  # whole seconds: changes happen on them
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if datetime.fromtimestamp(mid, zone).utcoffset() == before:
                    lo = mid
                else:
                    hi = mid
            found.append(float(hi))
        before, t = after, t + step
    return found


def by_rule(expression: str, zone: ZoneInfo, start: float, end: float) -> list[float]:
    """The rule applied by brute force: every matching wall time from a day before ``start``
    to a day after ``end``, each mapped to its instants, those in ``(start, end]``."""
    follows_wall_clock = not expression.split()[1].startswith("*")
    wall = datetime.fromtimestamp(start, zone).replace(tzinfo=None) - timedelta(days=1)
    last = datetime.fromtimestamp(end, zone).replace(tzinfo=None) + timedelta(days=1)
    matches = croniter(expression, wall - timedelta(minutes=1))
    instants: set[float] = set()
    while (candidate := matches.get_next(datetime)) <= last:
        first = candidate.replace(tzinfo=zone, fold=0)
        second = candidate.replace(tzinfo=zone, fold=1)
        exists = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == candidate
        if not exists:
            if follows_wall_clock:
                instants.add(first.timestamp())  # fold=0 reads it one gap later: shifted
        elif first.utcoffset() != second.utcoffset():
            instants.add(first.timestamp())
            if not follows_wall_clock:
                instants.add(second.timestamp())
        else:
            instants.add(first.timestamp())
    return sorted(t for t in instants if start < t <= end)


def walk(timetable: CronTimetable, start: float, end: float) -> list[float]:
    fired, t = [], start
    while (nxt := timetable.next_after(t)) is not None and nxt <= end:
        fired.append(nxt)
        t = nxt
    return fired


cron_fixed = st.builds(
    lambda m, h, dom: f"{m} {h} {dom} * *",
    st.sampled_from(MINUTES),
    st.sampled_from(FIXED_HOURS),
    st.sampled_from(["*", "*", "1-28", "*/2"]),
)
cron_any = st.builds(
    lambda m, h: f"{m} {h} * * *", st.sampled_from(MINUTES), st.sampled_from(ANY_HOURS)
)


@SETTINGS
@given(
    zone=st.sampled_from(ZONES),
    year=st.integers(2000, 2037),
    expression=st.one_of(cron_fixed, cron_any),
    data=st.data(),
)
def test_fire_times_follow_the_rule_around_every_transition(
    zone: str, year: int, expression: str, data: st.DataObject
) -> None:
    tz = ZoneInfo(zone)
    changes = transitions(tz, year)
    if changes:
        at = data.draw(st.sampled_from(changes), label="transition")
    else:
        at = datetime(year, 6, 1, tzinfo=UTC).timestamp()
    start = at - data.draw(st.integers(0, 2 * 86400), label="start before it")
    end = at + 2 * 86400
    timetable = CronTimetable(expression, zone)
    fired = walk(timetable, start, end)

    # Strictly increasing, and exactly the rule's instants.
    assert all(b > a for a, b in itertools.pairwise(fired)), fired
    assert fired == by_rule(expression, tz, start, end), (expression, zone, year)

    local = [datetime.fromtimestamp(t, tz) for t in fired]
    walls = [moment.replace(tzinfo=None) for moment in local]
    if timetable.follows_wall_clock:
        # Fall back: each wall-clock slot at most once.
        assert len(set(walls)) == len(walls)
    else:
        # Each real instant at most once (a repeated wall time once per offset), and never
        # a slot moved off its own wall time: the spring-forward gap is not an hour that passes.
        assert len({(w, m.utcoffset()) for w, m in zip(walls, local, strict=True)}) == len(walls)
        assert all(croniter.match(expression, wall) for wall in walls)


@SETTINGS
@given(
    zone=st.sampled_from([z for z in ZONES if z != "UTC"]),
    year=st.integers(2000, 2037),
    minute=st.integers(0, 59),
)
def test_a_daily_slot_in_the_spring_forward_gap_fires_once_shifted_by_the_gap(
    zone: str, year: int, minute: int
) -> None:
    tz = ZoneInfo(zone)
    for change in transitions(tz, year):
        before = datetime.fromtimestamp(change - 1, tz)
        after = datetime.fromtimestamp(change, tz)
        gap = (after.utcoffset() or timedelta()) - (before.utcoffset() or timedelta())
        if gap <= timedelta():
            continue  # a fall back
        # A wall time inside the gap: from the old offset's clock at the change.
        missing = before.replace(tzinfo=None) + timedelta(seconds=1)
        missing = missing.replace(minute=minute, second=0, microsecond=0)
        exists = (
            missing.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None)
            == missing
        )
        if exists:
            continue
        expression = f"{missing.minute} {missing.hour} * * *"
        daily = CronTimetable(expression, zone)
        (fired,) = walk(daily, change - 12 * 3600, change + 11 * 3600)
        assert datetime.fromtimestamp(fired, tz).replace(tzinfo=None) == missing + gap
        hourly = CronTimetable(f"{missing.minute} * * * *", zone)
        assert all(
            datetime.fromtimestamp(t, tz).replace(tzinfo=None) != missing
            for t in walk(hourly, change - 3 * 3600, change + 3 * 3600)
        )


@SETTINGS
@given(
    zone=st.sampled_from(ZONES),
    year=st.integers(2000, 2037),
    seconds=st.integers(1, 6 * 3600),
    offset=st.integers(-86400, 0),
)
def test_an_interval_follows_real_time_across_changes(
    zone: str, year: int, seconds: int, offset: int
) -> None:
    changes = transitions(ZoneInfo(zone), year) or [datetime(year, 6, 1, tzinfo=UTC).timestamp()]
    anchor = changes[0] + offset
    timetable = IntervalTimetable(float(seconds), anchor)
    t, fired = anchor - 1, []
    while len(fired) < 50:
        t = timetable.next_after(t)
        fired.append(t)
    assert fired[0] == anchor
    assert all(b - a == seconds for a, b in itertools.pairwise(fired))
