"""The run transition's bookkeeping for the runs side of a schedule, on a real Redis, driven
the way the workers' receivers drive it (the run log's writes, no worker needed):

* every ended attempt of a run that retried is appended to its record, and a late RETRY
  (after the attempt it announced has started) changes nothing;
* failed runs in a row are counted per schedule, a success resets the count, and the
  ``suspendAfterFailures``-th one pauses the entry (out of the due set, marked, counted in the
  metrics), which an unchanged re-apply keeps, and a resume or a spec change ends.
"""

from __future__ import annotations

import json

import redis
from forwarder_worker import Core
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.reconcile import apply_schedule
from forwarder_worker.schedules.store import Entry, UpsertResult

NAME = "team/fragile"


def test_each_ended_attempt_is_appended_and_a_late_retry_is_ignored(core: Core) -> None:
    runs = core.runs
    runs.queued("r1", "t", source="schedule", schedule=NAME, slot=1.0)
    runs.transition("r1", "STARTED", started=10.0, worker="w1", retries=0)
    runs.transition("r1", "RETRY", reason="ValueError: one", retries=1, retry_at=20.0)
    record = runs.get("r1")
    assert record is not None and record.state == "RETRY" and record.retry_at == 20.0
    (first,) = json.loads(record.attempts or "")
    assert first["attempt"] == 1 and first["state"] == "RETRY" and first["started"] == 10.0
    assert first["worker"] == "w1" and first["error"] == "ValueError: one"
    runs.transition("r1", "STARTED", started=21.0, worker="w2", retries=1)
    # A RETRY of attempt 1 arriving after attempt 2 started: ignored.
    assert runs.transition("r1", "RETRY", reason="late", retries=1) == "STARTED"
    runs.transition("r1", "FAILURE", error_type="ValueError", error="two", finished=22.0)
    record = runs.get("r1")
    assert record is not None and record.state == "FAILURE"
    attempts = json.loads(record.attempts or "")
    assert [(a["attempt"], a["state"], a.get("error")) for a in attempts] == [
        (1, "RETRY", "ValueError: one"),
        (2, "FAILURE", "ValueError: two"),
    ]
    assert attempts[1]["worker"] == "w2" and attempts[1]["started"] == 21.0
    # A run that never retried keeps no attempts.
    runs.queued("r2", "t", source="schedule", schedule=NAME, slot=2.0)
    runs.transition("r2", "STARTED", started=30.0, retries=0)
    runs.transition("r2", "SUCCESS", finished=31.0)
    record = runs.get("r2")
    assert record is not None and record.attempts is None


def fail(core: Core, run_id: str) -> None:
    core.runs.queued(run_id, "t", source="schedule", schedule=NAME, slot=1.0)
    core.runs.transition(run_id, "STARTED", started=1.0)
    core.runs.transition(run_id, "FAILURE", error_type="E", error="x", finished=2.0)


def test_failed_runs_in_a_row_pause_the_entry(core: Core, rclient: redis.Redis) -> None:
    raw = {"task": "t", "schedule": {"every": "30s"}, "suspendAfterFailures": 2}
    result = apply_schedule(core.store, "team", "fragile", raw, uid="u")
    assert result.ready and result.entry is not None
    assert result.entry.suspend_after == 2
    due_key = "forwarder:team/fragile"

    fail(core, "f1")
    core.runs.queued("s1", "t", source="schedule", schedule=NAME, slot=1.0)
    core.runs.transition("s1", "SUCCESS", finished=3.0)  # resets the count
    assert core.runs.summary(NAME).consecutive_failures == 0
    fail(core, "f2")
    stored = core.store.get(NAME)
    assert stored is not None and stored.paused is None and stored.due is not None
    fail(core, "f3")  # the second in a row
    summary = core.runs.summary(NAME)
    assert summary.consecutive_failures == 2 and summary.failed == 3
    assert summary.last_failure_time is not None
    stored = core.store.get(NAME)
    assert stored is not None and stored.paused == 2 and stored.due is None
    assert rclient.zscore("forwarder::schedule", due_key) is None
    assert core.metrics.read().get("suspended_after_failures") == 1
    fail(core, "f4")  # already paused: counted, not paused again
    assert core.store.get(NAME).paused == 2  # type: ignore[union-attr]
    assert core.metrics.read().get("suspended_after_failures") == 1

    # Re-applying the same spec (an operator restart, a folder resync) keeps the pause.
    again = apply_schedule(core.store, "team", "fragile", raw, uid="u")
    assert not again.changed and not again.ready
    assert again.reason == "SuspendedAfterFailures"
    assert "after 2 failed runs in a row" in again.message

    # A resume re-arms it and starts the count again; a second resume does nothing.
    assert core.store.resume(NAME)
    stored = core.store.get(NAME)
    assert stored is not None and stored.paused is None and stored.due is not None
    assert core.runs.summary(NAME).consecutive_failures == 0
    assert not core.store.resume(NAME)

    # Paused again, then a spec change ends it too.
    fail(core, "f5")
    fail(core, "f6")
    assert core.store.get(NAME).paused == 2  # type: ignore[union-attr]
    changed = Entry.from_spec(NAME, parse_spec({**raw, "suspendAfterFailures": 3}), uid="u")
    assert core.store.upsert(changed)[0] is UpsertResult.UPDATED
    stored = core.store.get(NAME)
    assert stored is not None and stored.paused is None and stored.due is not None
    assert core.runs.summary(NAME).consecutive_failures == 0
