"""Cron in IANA zones across DST: spring-forward and fall-back days in Helsinki and New York.

The semantics (timing.py's docstring, docs/scheduling.md): a fixed-hour cron keeps wall-clock
time, a nonexistent local time fires once shifted forward by the gap, a repeated one fires
once at its first occurrence; an hourly (``*`` hour) cron follows real time, one firing per
real hour. ``nextRunTime`` is shown as the store computes it for the operator's status.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from forwarder_worker import Core
from forwarder_worker.schedules.store import Entry
from forwarder_worker.schedules.timing import CronTimetable, utc_iso

HELSINKI, NEW_YORK = "Europe/Helsinki", "America/New_York"
# Transition days of 2026: Helsinki springs forward 03:00->04:00 and falls back 04:00->03:00;
# New York springs forward 02:00->03:00 and falls back 02:00->01:00.
SPRING = {HELSINKI: "2026-03-29", NEW_YORK: "2026-03-08"}
FALL = {HELSINKI: "2026-10-25", NEW_YORK: "2026-11-01"}


def local_day(zone: str, day: str) -> tuple[float, float]:
    """The real instants [start, end) of local date ``day`` in ``zone``."""
    tz, start = ZoneInfo(zone), datetime.fromisoformat(day)
    return start.replace(tzinfo=tz).timestamp(), (start + timedelta(days=1)).replace(
        tzinfo=tz
    ).timestamp()


def firings(expression: str, zone: str, start: float, end: float) -> list[float]:
    """Every firing in [start, end), walked with next_after as beat walks it."""
    table, found, ts = CronTimetable(expression, zone), [], start - 0.001
    while (ts := table.next_after(ts)) is not None and ts < end:  # type: ignore[assignment]
        found.append(ts)
    return found


# (zone, day, cron, nextRunTime from local midnight, what the case is)
DAILY = [
    (HELSINKI, SPRING[HELSINKI], "30 2 * * *", "2026-03-29T00:30:00Z", "exists, before the gap"),
    (HELSINKI, SPRING[HELSINKI], "30 3 * * *", "2026-03-29T01:30:00Z", "nonexistent: 04:30 EEST"),
    (HELSINKI, FALL[HELSINKI], "30 2 * * *", "2026-10-24T23:30:00Z", "exists once"),
    (HELSINKI, FALL[HELSINKI], "30 3 * * *", "2026-10-25T00:30:00Z", "twice: first, EEST"),
    (NEW_YORK, SPRING[NEW_YORK], "30 2 * * *", "2026-03-08T07:30:00Z", "nonexistent: 03:30 EDT"),
    (NEW_YORK, SPRING[NEW_YORK], "30 1 * * *", "2026-03-08T06:30:00Z", "exists, before the gap"),
    (NEW_YORK, FALL[NEW_YORK], "30 2 * * *", "2026-11-01T07:30:00Z", "exists once, EST"),
    (NEW_YORK, FALL[NEW_YORK], "30 1 * * *", "2026-11-01T05:30:00Z", "twice: first, EDT"),
]


@pytest.mark.parametrize(("zone", "day", "cron", "next_run", "case"), DAILY)
def test_daily_job_runs_exactly_once_on_transition_days(
    zone: str, day: str, cron: str, next_run: str, case: str
) -> None:
    start, end = local_day(zone, day)
    on_day = firings(cron, zone, start, end)
    assert [utc_iso(ts) for ts in on_day] == [next_run], case
    # The days either side fire once each, at the declared wall-clock time.
    before, _, after = firings(cron, zone, start - 86400, end + 86400)
    walls = {datetime.fromtimestamp(ts, ZoneInfo(zone)).strftime("%H:%M") for ts in (before, after)}
    assert walls == {f"{int(cron.split()[1]):02d}:30"}


@pytest.mark.parametrize(("zone", "day", "cron", "next_run", "case"), DAILY)
def test_next_run_time_as_the_store_arms_it(
    core: Core, zone: str, day: str, cron: str, next_run: str, case: str
) -> None:
    store = core.store
    midnight, _ = local_day(zone, day)
    entry = Entry(name="dst/daily", task="forwarder.ping", schedule={"cron": cron}, tz=zone)
    _, due = store.upsert(entry, now=midnight)
    assert utc_iso(due) == next_run, case
    stored = store.get("dst/daily")
    assert stored is not None
    assert utc_iso(stored.due) == next_run


@pytest.mark.parametrize(
    ("zone", "day", "count"),
    [
        (HELSINKI, SPRING[HELSINKI], 23),
        (HELSINKI, FALL[HELSINKI], 25),
        (NEW_YORK, SPRING[NEW_YORK], 23),
        (NEW_YORK, FALL[NEW_YORK], 25),
    ],
)
@pytest.mark.parametrize(
    ("cron", "step"), [("0 * * * *", 3600), ("@hourly", 3600), ("*/30 * * * *", 1800)]
)
def test_hourly_job_neither_doubles_nor_vanishes(
    zone: str, day: str, count: int, cron: str, step: int
) -> None:
    start, end = local_day(zone, day)
    found = firings(cron, zone, start - 7200, end + 7200)
    gaps = {b - a for a, b in itertools.pairwise(found)}
    assert gaps == {step}
    on_day = [ts for ts in found if start <= ts < end]
    assert len(on_day) == count * 3600 // step  # one per real hour: 23 or 25 of them


def test_hourly_next_run_time_across_fall_back() -> None:
    # New York's 01:00 happens twice on fall-back day: 05:00Z (EDT) and 06:00Z (EST).
    table = CronTimetable("0 * * * *", NEW_YORK)
    ts = datetime.fromisoformat("2026-11-01T04:30:00+00:00").timestamp()
    seen = []
    for _ in range(4):
        ts = table.next_after(ts)  # type: ignore[assignment]
        seen.append(utc_iso(ts))
    assert seen == [
        "2026-11-01T05:00:00Z",
        "2026-11-01T06:00:00Z",
        "2026-11-01T07:00:00Z",
        "2026-11-01T08:00:00Z",
    ]
