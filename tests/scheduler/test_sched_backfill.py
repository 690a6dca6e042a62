"""Backfill in the core (``Core.backfill``), with a real Redis, worker and beat: each slot of a
past window runs once, as source ``backfill`` with its slot as ``scheduled_at`` and in its
``forwarder_slot`` header; the same window again runs nothing; slots beat ran are not run
again, slots beat has not passed are left to it; Forbid skips (and counts) the slots that
would overlap, so asking again runs the next; Replace revokes the active run; backfills at once
share the slots; the window's refusals say why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from forwarder_worker import Core, Settings
from forwarder_worker.dispatch.backfill import (
    BackfillRefused,
    Window,
    format_instant,
    parse_window,
)
from forwarder_worker.dispatch.dispatcher import Firing
from forwarder_worker.names import BACKFILL_MAX_SLOTS
from forwarder_worker.runs.records import RunRecord
from support.processes import eventually
from support.scheduler_harness import Harness


@pytest.fixture
def clean(shared: Harness) -> Iterator[Harness]:
    yield shared
    for name in shared.store.names():
        shared.store.delete(name)


def backfilled(h: Harness, name: str) -> list[RunRecord]:
    return [r for r in h.records(name) if r.source == "backfill"]


def near(a: float, b: float) -> bool:
    return abs(a - b) < 0.001


def test_each_past_slot_runs_once_and_beat_s_slots_are_not_run_again(
    clean: Harness, beat_of: Any
) -> None:
    h = clean
    beat = beat_of()
    h.wait_ready(beat)
    name = "bf/tick"
    h.add(name, {"every": 2}, task="tests.sched.headers")
    fired = eventually(lambda: len(h.fired(name)) >= 2 and h.fired(name), 20, 0.1, "2 firings")
    anchor = h.store.get(name).meta.anchor  # type: ignore[union-attr]
    last = fired[-1].slot
    assert last is not None
    # Two slots before the schedule existed (its grid extended back) and the ones beat ran.
    window = Window(anchor - 4, last + 0.5)
    eventually(lambda: time.time() > window.end, 5, 0.05)
    done = h.core.backfill.run(name, window)
    ran = [s for s in done.slots if any(near(s, r.slot or 0) for r in fired)]
    assert len(done.slots) == 2 + len(ran) and len(ran) >= 2
    assert [o.firing.slot for o in done.sent] == pytest.approx([anchor - 4, anchor - 2], abs=1e-3)
    assert done.done == ran and done.skipped == [] and done.beats == []

    runs = eventually(
        lambda: (
            [r for r in backfilled(h, name) if r.final]
            if len(backfilled(h, name)) == 2 and all(r.final for r in backfilled(h, name))
            else None
        ),
        30,
        0.1,
        "the backfilled runs",
    )
    for run in runs:
        assert run.state == "SUCCESS", run
        assert any(near(run.slot or 0, slot) for slot in (anchor - 4, anchor - 2))
        assert json.loads(run.result or "{}")["forwarder_slot"] == repr(run.slot)

    # Status's lastScheduleTime stays beat's latest slot: the backfilled ones are older.
    assert (h.runs.summary(name).last_schedule_time or 0) >= last
    again = h.core.backfill.run(name, window)
    assert again.sent == [] and len(again.done) == len(done.slots)
    assert len(backfilled(h, name)) == 2


def test_slots_beat_has_not_passed_are_left_to_it(clean: Harness) -> None:
    h = clean
    name = "bf/behind"
    # No beat: the new interval is due at once and stays due, as after a beat outage.
    h.add(name, {"every": 2}, task="forwarder.ping", suspend=False)
    anchor = h.store.get(name).meta.anchor  # type: ignore[union-attr]
    eventually(lambda: time.time() > anchor + 2.2, 5, 0.05)
    done = h.core.backfill.run(name, Window(anchor - 4, anchor + 2.1))
    assert [o.firing.slot for o in done.sent] == pytest.approx([anchor - 4, anchor - 2], abs=1e-3)
    assert done.beats == pytest.approx([anchor, anchor + 2], abs=1e-3)
    assert "2 left to the schedule" in done.summary()


def test_forbid_skips_overlapping_slots_and_asking_again_runs_the_next(clean: Harness) -> None:
    h = clean
    name = "bf/forbid"
    h.add(
        name,
        {"every": 60},
        task="tests.sleep",
        kwargs={"seconds": 0.5},
        policy="Forbid",
        suspend=True,
    )
    now = time.time()
    window = Window(now - 170, now)  # three slots of a minute
    first = h.core.backfill.run(name, window)
    assert len(first.slots) == 3 and len(first.sent) == 1 and len(first.skipped) == 2
    assert "concurrencyPolicy Forbid" in (first.skipped[0].reason or "")
    assert "2 skipped (concurrencyPolicy Forbid" in first.summary()
    # Skipped slots leave no run record (they are counted), so the history keeps its runs.
    assert len(h.records(name)) == 1
    assert h.metric("skipped") >= 2

    def idle() -> bool:
        return all(r.final for r in h.records(name))

    eventually(idle, 30, 0.1, "the first run ended")
    second = h.core.backfill.run(name, window)
    assert [o.firing.slot for o in second.sent] == [first.skipped[0].firing.slot]
    assert len(second.done) == 1 and len(second.skipped) == 1
    eventually(idle, 30, 0.1, "the second run ended")
    third = h.core.backfill.run(name, window)
    assert len(third.sent) == 1 and len(third.done) == 2 and third.skipped == []
    eventually(idle, 30, 0.1, "the third run ended")
    assert sorted(r.slot or 0 for r in h.records(name)) == first.slots
    assert all(r.state == "SUCCESS" and r.source == "backfill" for r in h.records(name))


def test_allow_enqueues_every_slot(clean: Harness) -> None:
    h = clean
    name = "bf/allow"
    h.add(name, {"cron": "* * * * *"}, task="forwarder.ping", suspend=True)
    now = time.time()
    done = h.core.backfill.run(name, Window(now - 3 * 60, now))
    assert len(done.sent) == 3 and done.skipped == []
    eventually(
        lambda: len(h.records(name)) == 3 and all(r.state == "SUCCESS" for r in h.records(name)),
        30,
        0.1,
        "three runs",
    )
    # Cron slots are whole minutes, scheduled_at each one's.
    assert all((r.slot or 0) % 60 == 0 for r in h.records(name))


def test_windows_it_refuses_say_why(clean: Harness) -> None:
    h = clean
    h.add("bf/every", {"every": 1}, task="forwarder.ping", suspend=True)
    h.add("bf/once", {"at": time.time() + 3600}, task="forwarder.ping")
    now = time.time()
    cases = [
        ("bf/every", Window(now - 10, now + 60), "ends in the future"),
        ("bf/every", Window(now - 10, now - 20), "its end must be after its start"),
        ("bf/every", Window(now - 10, now - 10), "is empty"),
        ("bf/every", Window(now - 500, now), f"more than {BACKFILL_MAX_SLOTS} slots"),
        ("bf/every", Window(now - 8 * 24 * 3600, now - 8 * 24 * 3600 + 5), "result_expires"),
        ("bf/once", Window(now - 10, now), "one-off"),
    ]
    for name, window, message in cases:
        with pytest.raises(BackfillRefused, match=message):
            h.core.backfill.run(name, window)
    with pytest.raises(LookupError, match="no entry"):
        h.core.backfill.run("bf/missing", Window(now - 10, now))
    assert h.records("bf/every") == []
    # Exactly the cap is fine.
    assert len(h.core.backfill.slots("bf/every", Window(now - 100.5, now - 0.5))) == 100

    for text, message in [
        ("2026-01-01T00:00:00Z", "not a window"),
        ("2026-01-01T00:00:00/2026-01-01T01:00:00Z", "start '2026-01-01T00:00:00' is not"),
        ("2026-01-01T00:00:00Z/yesterday", "end 'yesterday' is not"),
        ("2026-02-30T00:00:00Z/2026-03-01T00:00:00Z", "not a valid time"),
    ]:
        with pytest.raises(BackfillRefused, match=message):
            parse_window(text)
    window = parse_window("2026-01-01T02:00:00+02:00/2026-01-01T01:00:00.5Z")
    assert window == Window(1767225600.0, 1767229200.5)
    assert str(window) == "2026-01-01T00:00:00Z/2026-01-01T01:00:00.500000Z"
    assert format_instant(1767225600.0) == "2026-01-01T00:00:00Z"
    for edge in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        with pytest.raises(BackfillRefused, match="not a valid time"):
            parse_window(f"{edge}/2026-01-01T00:00:00Z")


def test_a_long_exclusion_in_the_window_runs_none_of_its_slots(clean: Harness) -> None:
    h = clean
    name = "bf/holiday"
    now = time.time()
    days = {time.strftime("%Y-%m-%d", time.gmtime(at)) for at in (now - 7200, now)}
    # 3,600 excluded slots in a row: the timetable walks them in checkpoints, which are
    # excluded slots themselves and must not be taken for slots to run.
    h.add(name, {"every": 1}, exclude_dates=sorted(days), suspend=True)
    assert h.core.backfill.slots(name, Window(now - 7200, now - 3600)) == []
    done = h.core.backfill.run(name, Window(now - 7200, now - 3600))
    assert done.sent == [] and h.records(name) == []


def test_the_sample_s_window_is_a_window_of_its_recurring_schedule() -> None:
    sample = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "manifests/samples/backfill.yaml").read_text()
    )
    window = parse_window(sample["metadata"]["annotations"]["forwarder.dev/backfill"])
    assert window.end - window.start == 6 * 3600
    assert "cron" in sample["spec"]["schedule"]


def test_replace_revokes_the_active_run_and_enqueues_every_slot(clean: Harness) -> None:
    h = clean
    name = "bf/replace"
    entry = h.add(
        name,
        {"cron": "* * * * *"},
        task="tests.sleep",
        kwargs={"seconds": 30},
        policy="Replace",
        suspend=True,
    )
    (running,) = h.core.dispatcher.fire([Firing(entry, time.time(), "trigger")])
    eventually(lambda: h.runs.get(running.run_id).state == "STARTED", 30, 0.1)  # type: ignore[union-attr]
    now = time.time()
    minute = now - now % 60
    done = h.core.backfill.run(name, Window(minute - 120, minute))
    assert len(done.sent) == 2 and done.skipped == []
    eventually(lambda: h.runs.get(running.run_id).state == "REVOKED", 30, 0.1)  # type: ignore[union-attr]
    for outcome in done.sent:
        h.core.app.control.revoke(outcome.run_id, terminate=True)


def test_two_backfills_at_once_run_each_slot_once(clean: Harness) -> None:
    h = clean
    name = "bf/race"
    h.add(name, {"every": 1}, task="forwarder.ping", suspend=True)
    now = time.time()
    window = Window(now - 40, now)
    cores = [Core.from_settings(Settings(redis_url=h.url)) for _ in range(4)]
    try:
        with ThreadPoolExecutor(len(cores)) as pool:
            results = list(pool.map(lambda core: core.backfill.run(name, window), cores))
    finally:
        for core in cores:
            core.close()
    sent = [o.firing.slot for result in results for o in result.sent]
    assert len(sent) == len(set(sent)) == len(results[0].slots) == 40
    assert all(len(r.sent) + len(r.done) == 40 for r in results)
    backfilled_runs = backfilled(h, name)
    assert sorted(r.slot or 0 for r in backfilled_runs) == pytest.approx(sorted(sent), abs=1e-3)
