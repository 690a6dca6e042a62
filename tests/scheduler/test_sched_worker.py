"""Firings run by a real worker: headers the task sees, the starting deadline, Forbid and
Replace with a slow task, and DST days replayed by a beat on an injected clock.

One Redis and one worker serve the whole module (``shared``); each test starts its own beat.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from forwarder_worker import Core
from forwarder_worker.beat.scheduler import ForwarderScheduler
from forwarder_worker.runs.records import RunRecord
from forwarder_worker.schedules.store import Entry
from forwarder_worker.schedules.timing import utc_iso
from forwarder_worker.settings import Settings
from support.processes import Proc, eventually
from support.scheduler_harness import Harness, stop_firing

StartBeat = Callable[..., Proc]


@pytest.fixture(scope="module")
def control(shared: Harness) -> Iterator[Any]:
    app = Core.from_settings(Settings(redis_url=shared.url)).app
    yield app.control
    app.close()


def finished(shared: Harness, name: str) -> list[RunRecord]:
    return [r for r in shared.fired(name) if r.final]


def test_the_task_sees_schedule_uid_and_slot_headers(shared: Harness, beat_of: StartBeat) -> None:
    harness_beat = beat_of()
    shared.wait_ready(harness_beat)
    shared.add("hdr/echo", {"every": 3600}, task="tests.sched.headers", uid="uid-1234")
    (run,) = eventually(lambda: finished(shared, "hdr/echo"), 30, message="echo ran")
    assert run.state == "SUCCESS", run
    assert run.result is not None
    seen = json.loads(run.result)
    assert seen == {
        "forwarder_schedule": "hdr/echo",
        "forwarder_uid": "uid-1234",
        "forwarder_slot": repr(run.slot),
    }


def test_a_firing_not_started_within_its_deadline_expires(
    shared: Harness, beat_of: StartBeat, control: Any
) -> None:
    beat = beat_of()
    shared.wait_ready(beat)
    # Queue "late" has no consumer yet, like a firing stuck behind busy workers.
    shared.add("late/expiring", {"every": 3600}, deadline=2, queue="late")
    (queued,) = eventually(lambda: shared.fired("late/expiring"), 30, message="queued")
    assert queued.state == "PENDING"
    assert queued.slot is not None
    time.sleep(max(0.0, queued.slot + 2.5 - time.time()))
    control.add_consumer("late", reply=True, timeout=10, limit=1)
    try:
        ended = eventually(lambda: finished(shared, "late/expiring"), 30, message="ended")
    finally:
        control.cancel_consumer("late", reply=True, timeout=10, limit=1)
    (run,) = ended
    assert (run.state, run.reason) == ("REVOKED", "expired")
    assert run.started is None  # it never ran


def overlaps(runs: list[RunRecord]) -> list[tuple[str, str]]:
    spans = sorted((r.started or 0, r.finished or time.time(), r.id) for r in runs if r.started)
    return [(a[2], b[2]) for a, b in itertools.pairwise(spans) if b[0] < a[1]]


def test_forbid_skips_firings_while_a_run_is_active(shared: Harness, beat_of: StartBeat) -> None:
    beat = beat_of()
    shared.wait_ready(beat)
    shared.add(
        "policy/forbid",
        {"every": 1},
        task="tests.sleep",
        kwargs={"seconds": 2.5},
        policy="Forbid",
    )

    def enough() -> bool:
        runs = shared.records("policy/forbid")
        done = [r for r in runs if r.state == "SUCCESS"]
        skipped = [r for r in runs if r.state == "SKIPPED"]
        return len(done) >= 2 and len(skipped) >= 2

    eventually(enough, 40, 0.2, "two runs and two skips")
    stop_firing(shared.store, "policy/forbid")
    time.sleep(0.2)
    runs = shared.records("policy/forbid")
    skipped = [r for r in runs if r.state == "SKIPPED"]
    ran = [r for r in runs if r.state != "SKIPPED"]
    assert all(r.reason and "concurrencyPolicy Forbid" in r.reason for r in skipped)
    assert all(r.started is None for r in skipped)  # recorded, never run
    assert overlaps(ran) == [], "two runs of a Forbid schedule overlapped"
    assert len({r.slot for r in runs}) == len(runs)
    assert shared.metric("skipped") >= len(skipped)


def test_replace_terminates_the_active_run_and_starts_the_new_one(
    shared: Harness, beat_of: StartBeat, control: Any
) -> None:
    beat = beat_of()
    shared.wait_ready(beat)
    shared.add(
        "policy/replace",
        {"every": 3},
        task="tests.sleep",
        kwargs={"seconds": 60},
        policy="Replace",
    )

    def replaced_twice() -> list[RunRecord]:
        runs = shared.fired("policy/replace")
        revoked = [r for r in runs if r.state == "REVOKED"]
        return runs if len(revoked) >= 2 and runs[-1].state == "STARTED" else []

    try:
        eventually(replaced_twice, 40, 0.2, "two replacements")
        stop_firing(shared.store, "policy/replace")
        runs = shared.fired("policy/replace")
        last = runs[-1]
        if last.state != "STARTED":
            runs, last = runs[:-1], runs[-2]
        for old, new in itertools.pairwise(runs):
            if new.state == "PENDING":
                break
            # Each run was terminated for the one after it, never left running beside it.
            assert (old.state, old.reason) == ("REVOKED", "terminated"), old
            assert old.started is not None
            assert old.finished is not None
            assert new.created is not None
            assert old.finished >= new.created - 0.5
    finally:
        control.revoke(
            [r.id for r in shared.fired("policy/replace") if not r.final],
            terminate=True,
            signal="SIGTERM",
        )
    eventually(lambda: all(r.final for r in shared.fired("policy/replace")), 30, 0.2, "all ended")


class FakeClock:
    """A settable clock for beat: DST days replayed in seconds."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# zone, local midnight of the transition day (UTC), the daily jobs and their expected slots,
# and the daily 02:30's nextRunTime once the day is over.
DST_DAYS = [
    pytest.param(
        "America/New_York",
        "2026-03-08T05:00:00Z",
        {"30 2 * * *": "2026-03-08T07:30:00Z", "30 1 * * *": "2026-03-08T06:30:00Z"},
        "2026-03-09T06:30:00Z",
        id="new-york-spring-forward",
    ),
    pytest.param(
        "America/New_York",
        "2026-11-01T04:00:00Z",
        {"30 2 * * *": "2026-11-01T07:30:00Z", "30 1 * * *": "2026-11-01T05:30:00Z"},
        "2026-11-02T07:30:00Z",
        id="new-york-fall-back",
    ),
    pytest.param(
        "Europe/Helsinki",
        "2026-03-28T22:00:00Z",
        {"30 2 * * *": "2026-03-29T00:30:00Z", "30 3 * * *": "2026-03-29T01:30:00Z"},
        "2026-03-29T23:30:00Z",
        id="helsinki-spring-forward",
    ),
    pytest.param(
        "Europe/Helsinki",
        "2026-10-24T21:00:00Z",
        {"30 2 * * *": "2026-10-24T23:30:00Z", "30 3 * * *": "2026-10-25T00:30:00Z"},
        "2026-10-26T00:30:00Z",
        id="helsinki-fall-back",
    ),
]


@pytest.mark.parametrize(("zone", "midnight", "daily", "next_daily"), DST_DAYS)
def test_dst_day_on_an_injected_clock(
    shared: Harness, zone: str, midnight: str, daily: dict[str, str], next_daily: str
) -> None:
    start = _at(midnight)
    clock = FakeClock(start - 1)
    app = Core.from_settings(
        Settings(redis_url=shared.url, beat_max_loop_interval=0.05, beat_lock_timeout=30)
    ).app
    scheduler = ForwarderScheduler(app)
    scheduler.clock = clock  # type: ignore[method-assign]
    names = {expr: f"dst/daily-{i}" for i, expr in enumerate(daily)}
    try:
        for expr, name in names.items():
            shared.store.upsert(
                Entry(name, "tests.sched.headers", {"cron": expr}, tz=zone), now=clock.now
            )
        shared.store.upsert(
            Entry("dst/hourly", "tests.sched.headers", {"cron": "0 * * * *"}, tz=zone),
            now=clock.now,
        )
        # Walk 4.5 real hours around the transition, a tick every 15 minutes.
        for step in range(19):
            clock.now = start + step * 900 + 1
            scheduler.tick()
    finally:
        scheduler.close()

    for expr, name in names.items():
        # Each daily job ran exactly once, at its DST-adjusted instant, and the task saw it.
        (run,) = eventually(lambda n=name: finished(shared, n), 30, message=f"{expr} ran")
        assert utc_iso(run.slot) == daily[expr], expr
        assert run.state == "SUCCESS"
        assert run.result is not None
        assert json.loads(run.result)["forwarder_slot"] == repr(run.slot)
    stored = shared.store.get(names["30 2 * * *"])
    assert stored is not None
    assert utc_iso(stored.due) == next_daily  # nextRunTime: tomorrow's 02:30, new offset

    # The hourly job fired once per real hour: 5 firings an hour apart, none doubled or lost.
    hourly = eventually(
        lambda: len(finished(shared, "dst/hourly")) >= 5 and finished(shared, "dst/hourly"),
        30,
        message="hourly ran",
    )
    slots = sorted(r.slot for r in hourly if r.slot is not None)
    assert slots == [start + k * 3600 for k in range(5)]
    for name in [*names.values(), "dst/hourly"]:
        shared.store.delete(name)
