"""The window, the run limit and the exclusions (startTime, endTime, maxRuns, exclusions):
no slot outside the window fires, the schedule completes after its last slot or its
maxRuns-th firing and never fires again, excluded slots are stepped over and counted, and
the preview (status.nextRunTimes, the api, the CLI) lists exactly what beat then fires.

Beat runs in this process on an injected clock, so hours of slots pass in seconds; a real
worker (the module's ``shared`` one) runs every firing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime

import pytest
from forwarder_worker import Core
from forwarder_worker.beat.scheduler import ForwarderScheduler
from forwarder_worker.runs.records import RunRecord
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.preview import describe_slot, preview, upcoming
from forwarder_worker.schedules.status import completed_status, runs_status
from forwarder_worker.schedules.store import Entry, UpsertResult
from forwarder_worker.settings import Settings
from support.processes import eventually
from support.scheduler_harness import Harness

TASK = "tests.sched.headers"
# A Monday, 00:00 UTC: clear of any DST change in the zones below.
T0 = datetime.fromisoformat("2030-01-07T00:00:00+00:00").timestamp()


class FakeClock:
    """A settable clock for beat."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def beat_at(shared: Harness) -> Iterator[tuple[ForwarderScheduler, FakeClock]]:
    """An in-process beat on the shared Redis, on a clock the test moves."""
    clock = FakeClock(T0 - 1)
    core = Core.from_settings(
        Settings(redis_url=shared.url, beat_max_loop_interval=0.02, beat_lock_timeout=30)
    )
    scheduler = ForwarderScheduler(core.app)
    scheduler.clock = clock  # type: ignore[method-assign]
    yield scheduler, clock
    scheduler.close()
    core.close()
    for name in shared.store.names():
        shared.store.delete(name)


def walk(scheduler: ForwarderScheduler, clock: FakeClock, until: float, step: float) -> None:
    """Tick beat every ``step`` seconds of its clock up to ``until``."""
    while clock.now < until:
        clock.now = min(clock.now + step, until)
        scheduler.tick()


def ran(shared: Harness, name: str, count: int) -> list[RunRecord]:
    """The ``count`` runs of ``name``, once the worker has finished them all."""
    return eventually(
        lambda: (
            (runs := [r for r in shared.fired(name) if r.final]) and len(runs) >= count and runs
        ),
        30,
        message=f"{name}: {count} runs",
    )


def test_window_limit_and_exclusions_fire_exactly_the_previewed_slots(
    shared: Harness, beat_at: tuple[ForwarderScheduler, FakeClock]
) -> None:
    scheduler, clock = beat_at
    entries = [
        # Every 10 minutes, only within [00:30, 01:30): the grid starts at startTime.
        Entry("tt/window", TASK, {"every": 600}, start=T0 + 1800, end=T0 + 5400),
        # Every 10 minutes from now, at most 3 firings.
        Entry("tt/limit", TASK, {"cron": "*/10 * * * *"}, max_runs=3),
        # Every 10 minutes in Helsinki (UTC+2), except minutes 20-39 and all of 2030-01-08.
        Entry(
            "tt/excluded",
            TASK,
            {"cron": "*/10 * * * *"},
            tz="Europe/Helsinki",
            exclude_cron=["20-39 * * * *"],
            exclude_dates=["2030-01-08"],
        ),
    ]
    previews = {}
    for entry in entries:
        shared.store.upsert(entry, now=clock.now)
        stored = shared.store.get(entry.name)
        assert stored is not None
        previews[entry.name] = upcoming(stored.entry, stored.meta, stored.due, 100)
    # Two hours of the clock, ticking every minute.
    walk(scheduler, clock, T0 + 7200, 60)

    window = [r.slot for r in ran(shared, "tt/window", 6)]
    assert window == [T0 + 1800 + k * 600 for k in range(6)]  # 00:30 ... 01:20, not 01:30
    limit = [r.slot for r in ran(shared, "tt/limit", 3)]
    assert limit == [T0, T0 + 600, T0 + 1200]
    excluded = [r.slot for r in ran(shared, "tt/excluded", 9)]
    minutes = [int((slot - T0) // 60) for slot in excluded]
    assert minutes == [0, 10, 40, 50, 60, 70, 100, 110, 120]
    # The preview made before any firing listed exactly these.
    assert previews["tt/window"] == window
    assert previews["tt/limit"] == limit
    assert previews["tt/excluded"][:9] == excluded

    messages = {"tt/window": "endTime 2030-01-07T01:30:00Z", "tt/limit": "maxRuns 3 reached"}
    for name, why in messages.items():
        stored = shared.store.get(name)
        assert stored is not None
        assert stored.meta.done, name
        assert stored.due is None, name
        ready = completed_status(stored)["conditions"][0]
        assert (ready["status"], ready["reason"]) == ("True", "Completed"), name
        assert why in ready["message"], ready
        status = runs_status(shared.runs.summary(name), stored)
        assert status["nextRunTimes"] == []
        assert status["nextRunTime"] is None

    stored = shared.store.get("tt/excluded")
    assert stored is not None
    assert not stored.meta.done
    assert completed_status(stored) == {}
    # 9 fired; the slots at minutes 20 and 30 of each hour (4) were stepped over and counted.
    assert stored.meta.excluded == 4
    status = runs_status(shared.runs.summary("tt/excluded"), stored)
    assert status["excludedRunCount"] == 4
    assert status["nextRunTimes"] == [
        "2030-01-07T02:10:00Z",
        "2030-01-07T02:40:00Z",
        "2030-01-07T02:50:00Z",
        "2030-01-07T03:00:00Z",
        "2030-01-07T03:10:00Z",
    ]
    # No slot on 2030-01-08 in Helsinki (22:00Z the day before to 22:00Z): the excluded date.
    later = upcoming(stored.entry, stored.meta, stored.due, 300)
    day_start = datetime.fromisoformat("2030-01-07T22:00:00+00:00").timestamp()
    assert not [t for t in later if day_start <= t < day_start + 86400]
    assert day_start + 86400 in later

    # Nothing fires again after completion, however long beat runs.
    walk(scheduler, clock, T0 + 7200 + 6 * 3600, 600)
    time.sleep(0.5)
    assert len(shared.fired("tt/window")) == 6
    assert len(shared.fired("tt/limit")) == 3


def test_a_completed_entry_stays_complete_until_its_timing_allows_more(
    shared: Harness, beat_at: tuple[ForwarderScheduler, FakeClock]
) -> None:
    scheduler, clock = beat_at
    entry = Entry("tt/again", TASK, {"every": 60}, max_runs=2, uid="u-1")
    shared.store.upsert(entry, now=clock.now)
    walk(scheduler, clock, T0 + 600, 30)
    assert len(ran(shared, "tt/again", 2)) == 2
    # The same spec re-applied (an operator restart, a resync) does not revive it; a change
    # that is not timing (kwargs) does not either.
    assert shared.store.upsert(entry, now=clock.now) == (UpsertResult.UNCHANGED, None)
    changed = replace(entry, kwargs={"x": 1}, generation=1)
    assert shared.store.upsert(changed, now=clock.now) == (UpsertResult.UPDATED, None)
    # A higher maxRuns leaves slots to fire: it re-arms, and fires up to the new limit.
    more = replace(changed, max_runs=3, generation=2)
    result, due = shared.store.upsert(more, now=clock.now)
    assert result is UpsertResult.UPDATED
    assert due is not None
    walk(scheduler, clock, T0 + 1200, 30)
    assert len(ran(shared, "tt/again", 3)) == 3
    stored = shared.store.get("tt/again")
    assert stored is not None
    assert (stored.meta.done, stored.meta.count, stored.due) == (True, 3, None)


def test_a_window_that_is_over_completes_at_once(shared: Harness) -> None:
    entry = Entry("tt/over", TASK, {"cron": "* * * * *"}, start=T0 - 7200, end=T0 - 3600)
    result, due = shared.store.upsert(entry, now=T0)
    assert (result, due) == (UpsertResult.CREATED, None)
    stored = shared.store.get("tt/over")
    assert stored is not None
    assert stored.meta.done
    assert completed_status(stored)["conditions"][0]["reason"] == "Completed"
    shared.store.delete("tt/over")


def test_preview_of_a_spec_marks_slots_moved_by_dst() -> None:
    now = datetime.fromisoformat("2026-03-07T12:00:00+00:00").timestamp()
    spec = parse_spec(
        {
            "task": "forwarder.ping",
            "schedule": {"cron": "30 2 * * *"},
            "timeZone": "America/New_York",
            "maxRuns": 3,
            "exclusions": {"dates": ["2026-03-09"]},
        },
        now=now,
    )
    entry = Entry.from_spec("a/b", spec)
    slots = [describe_slot(entry, at) for at in preview(spec, 10, now=now)]
    # maxRuns caps the list; the excluded day is left out; the gap day is shifted and marked.
    assert [s.utc for s in slots] == [
        "2026-03-08T07:30:00Z",
        "2026-03-10T06:30:00Z",
        "2026-03-11T06:30:00Z",
    ]
    assert slots[0].local == "2026-03-08T03:30:00-04:00"
    assert slots[0].dst == "shifted +1h: 02:30 does not exist on 2026-03-08"
    assert [s.dst for s in slots[1:]] == ["", ""]
    fall = parse_spec(
        {"task": "forwarder.ping", "schedule": {"cron": "30 1 * * *"}, "timeZone": "US/Eastern"},
        now=now,
    )
    fall_entry = Entry.from_spec("a/c", fall)
    at = datetime.fromisoformat("2026-11-01T05:30:00+00:00").timestamp()
    assert describe_slot(fall_entry, at).dst == "01:30 happens twice on 2026-11-01: the first"
    hourly = Entry("a/d", "forwarder.ping", {"cron": "30 * * * *"}, tz="US/Eastern")
    second = datetime.fromisoformat("2026-11-01T06:30:00+00:00").timestamp()
    assert describe_slot(hourly, second).dst == "01:30 happens twice on 2026-11-01: the second"


def test_missed_run_policies_after_an_outage(
    shared: Harness, beat_at: tuple[ForwarderScheduler, FakeClock]
) -> None:
    scheduler, clock = beat_at
    for policy in ("Latest", "All", "Skip"):
        shared.store.upsert(
            Entry(f"miss/{policy.lower()}", TASK, {"cron": "* * * * *"}, missed_policy=policy),
            now=clock.now,
        )
    for policy in ("Forbid", "Replace"):
        shared.store.upsert(
            Entry(
                f"miss/all-{policy.lower()}",
                TASK,
                {"cron": "* * * * *"},
                missed_policy="All",
                policy=policy,
            ),
            now=clock.now,
        )
    walk(scheduler, clock, T0, 1)  # each fires its T0 slot
    for name in ("miss/all-forbid", "miss/all-replace"):
        ran(shared, name, 1)  # ended: Forbid and Replace find no active run
    # Beat is away for ten and a half minutes: the slots T0+60 ... T0+600 pass unfired, and
    # the latest of them is 45 s old when beat is back (more than a failover's 30 s).
    clock.now = T0 + 645
    scheduler.tick()
    latest = [r.slot for r in ran(shared, "miss/latest", 2)]
    assert latest == [T0, T0 + 600]  # CronJob's rule: the latest missed slot, once
    every = [r.slot for r in ran(shared, "miss/all", 11)]
    assert every == [T0 + k * 60 for k in range(11)]  # each missed slot once, oldest first
    skip = shared.records("miss/skip")
    assert [r.slot for r in skip if r.state != "SKIPPED"] == [T0]
    (skipped,) = [r for r in skip if r.state == "SKIPPED"]
    assert skipped.slot == T0 + 600
    assert skipped.reason is not None
    assert "missedRunPolicy Skip" in skipped.reason
    missed = {}
    for policy in ("latest", "all", "skip"):
        stored = shared.store.get(f"miss/{policy}")
        assert stored is not None
        assert stored.due == T0 + 660
        status = runs_status(shared.runs.summary(f"miss/{policy}"), stored)
        missed[policy] = status["missedRunCount"]
    assert missed == {"latest": 9, "all": 0, "skip": 10}
    # All with a concurrencyPolicy: Forbid sends the oldest missed slot (the rest see it
    # queued), Replace the latest (each would replace the one before at once).
    for name, sent in (("miss/all-forbid", T0 + 60), ("miss/all-replace", T0 + 600)):
        records = shared.records(name)
        assert [r.slot for r in records if r.state != "SKIPPED"] == [T0, sent], name
        skipped = [r for r in records if r.state == "SKIPPED"]
        assert len(skipped) == 9, name
        assert all("concurrencyPolicy" in (r.reason or "") for r in skipped), name
        # Counted as skipped by overlap; the missed ones of the other policies are not.
        status = runs_status(shared.runs.summary(name), shared.store.get(name))
        assert status["skippedRunCount"] == 9, name
    for name in ("miss/latest", "miss/all", "miss/skip"):
        assert runs_status(shared.runs.summary(name), None)["skippedRunCount"] == 0, name
    # And on time again, every policy fires the next slot.
    walk(scheduler, clock, T0 + 661, 1)
    for policy, count in (("latest", 3), ("all", 12)):
        assert ran(shared, f"miss/{policy}", count)[-1].slot == T0 + 660
    eventually(lambda: T0 + 660 in [r.slot for r in shared.fired("miss/skip")], 30)


def test_all_fires_at_most_100_missed_slots_and_says_so(
    shared: Harness, beat_at: tuple[ForwarderScheduler, FakeClock]
) -> None:
    scheduler, clock = beat_at
    shared.store.upsert(
        Entry("miss/capped", "forwarder.ping", {"every": 1}, missed_policy="All"), now=T0
    )
    since = time.time()
    clock.now = T0
    scheduler.tick()  # fires T0
    clock.now = T0 + 150.5  # the slots T0+1 ... T0+150 pass unfired
    scheduler.tick()

    def records() -> list[RunRecord]:
        # From the global history: a schedule's own keeps its latest 100 runs only.
        found = shared.runs.records(shared.runs.ids_since(since))
        return [r for r in found if r.schedule == "miss/capped"]

    found = eventually(lambda: (r := records()) and len(r) == 102 and r, 30, 0.1, "records")
    fired = sorted(r.slot for r in found if r.state != "SKIPPED")
    assert fired == [T0] + [T0 + k for k in range(51, 151)]  # the latest 100 missed ones
    (capped,) = [r for r in found if r.state == "SKIPPED"]
    assert capped.slot == T0 + 1
    assert capped.reason == (
        "missed: 150 slots passed within the starting deadline, more than the 100 "
        "missedRunPolicy All fires; the oldest 50 did not fire"
    )
    stored = shared.store.get("miss/capped")
    assert stored is not None
    assert stored.meta.missed == 50
    assert stored.due == T0 + 151


def test_a_long_exclusion_is_walked_in_checkpoints_and_counted(
    shared: Harness, beat_at: tuple[ForwarderScheduler, FakeClock]
) -> None:
    scheduler, clock = beat_at
    start = datetime.fromisoformat("2030-01-07T23:59:30+00:00").timestamp()
    day_after = datetime.fromisoformat("2030-01-09T00:00:00+00:00").timestamp()
    # Every 10 s, but not on 2030-01-08: 8,640 excluded slots, more than one step walks.
    entry = Entry("tt/long", TASK, {"every": 10}, exclude_dates=["2030-01-08"])
    clock.now = start
    shared.store.upsert(entry, now=start)
    walk(scheduler, clock, start + 25, 5)  # fires 23:59:30, :40, :50
    stored = shared.store.get("tt/long")
    assert stored is not None
    # Beat is armed at a checkpoint inside the excluded day, not at the end of the schedule.
    assert stored.due is not None
    assert start + 30 < stored.due < day_after
    assert not stored.meta.done
    status = runs_status(shared.runs.summary("tt/long"), stored)
    assert status["nextRunTime"] == "2030-01-09T00:00:00Z"  # the next run, not the checkpoint
    assert status["nextRunTimes"][:2] == ["2030-01-09T00:00:00Z", "2030-01-09T00:00:10Z"]
    walk(scheduler, clock, day_after - 1, 3600)  # the excluded day, an hour at a time
    clock.now = day_after
    scheduler.tick()
    slots = [r.slot for r in ran(shared, "tt/long", 4)]
    assert slots == [start, start + 10, start + 20, day_after]
    assert shared.records("tt/long")[-1].state != "SKIPPED"
    stored = shared.store.get("tt/long")
    assert stored is not None
    assert stored.meta.excluded == 8640
    assert stored.meta.missed == 0
    # The scheduler's counter too (the api's forwarder_scheduler_excluded_total).
    scheduler.close()  # writes the pending counters
    assert shared.metric("excluded") >= 8640
    assert stored.due == day_after + 10
