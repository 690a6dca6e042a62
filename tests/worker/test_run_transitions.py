"""The run transition's bookkeeping for the runs side of a schedule, on a real Redis, driven
the way the workers' receivers drive it (the run log's writes, no worker needed):

* every ended attempt of a run that retried is appended to its record, and a late RETRY
  (after the attempt it announced has started) changes nothing;
* a worker's RECEIVED, which it writes a few milliseconds late with others in one round trip,
  changes nothing once the run has ended (every field kept) or retried, is written before any
  later transition of the run from the same process, and survives Redis losing its scripts;
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


def test_a_late_received_changes_nothing_once_the_run_ended_or_retried(
    core: Core, rclient: redis.Redis
) -> None:
    runs = core.runs
    ends: dict[str, dict[str, str | float]] = {
        "SUCCESS": {"result": "42"},
        "FAILURE": {"error_type": "ValueError", "error": "no"},
        "REVOKED": {"reason": "revoked"},
    }
    for state, fields in ends.items():
        run_id = f"late-{state}"
        runs.queued(run_id, "t", source="schedule", schedule=NAME, slot=1.0)
        runs.transition(run_id, "STARTED", started=10.0, received=9.0, worker="w1", retries=0)
        runs.transition(run_id, state, finished=11.0, **fields)
        held = rclient.hgetall(runs.keys.run(run_id))
        late = runs.build(run_id, "RECEIVED", task="t", received=12.0, worker="w2")
        assert runs.pend(late)
        assert runs.flush() == 1
        assert rclient.hgetall(runs.keys.run(run_id)) == held, state
    # A run revoked before it started (no STARTED carried the receipt): the same.
    runs.queued("late-queued", "t", source="api")
    runs.transition("late-queued", "REVOKED", finished=5.0, reason="revoked")
    held = rclient.hgetall(runs.keys.run("late-queued"))
    runs.pend(runs.build("late-queued", "RECEIVED", received=6.0, worker="w2"))
    runs.flush()
    assert rclient.hgetall(runs.keys.run("late-queued")) == held

    # The first attempt's RECEIVED landing after its RETRY: the RETRY stays.
    runs.queued("r", "t", source="schedule", schedule=NAME, slot=1.0)
    runs.transition("r", "STARTED", started=10.0, received=9.0, worker="w1", retries=0)
    runs.transition("r", "RETRY", reason="E: x", retries=1, retry_at=50.0)
    held = rclient.hgetall(runs.keys.run("r"))
    runs.pend(runs.build("r", "RECEIVED", received=9.0, worker="w1"))
    runs.flush()
    assert rclient.hgetall(runs.keys.run("r")) == held
    # The retried attempt's own receipt is recorded; the run shows RETRY, with its next
    # attempt's time, until that attempt starts.
    runs.pend(runs.build("r", "RECEIVED", received=10.5, worker="w2"))
    runs.flush()
    record = runs.get("r")
    assert record is not None and record.state == "RETRY" and record.retry_at == 50.0
    assert (record.received, record.worker, record.retries) == (10.5, "w2", 1)


def test_the_next_attempts_receipt_landing_before_the_retry_keeps_every_attempt(
    core: Core,
) -> None:
    # A retry's message is sent while the attempt still runs, so the worker can receive it,
    # and write its RECEIVED, before that attempt's RETRY lands: the RETRY still ends the
    # attempt (appended to the record), and the STARTED that was current stays until then.
    runs = core.runs
    runs.queued("n", "t", source="schedule", schedule=NAME, slot=1.0)
    runs.transition("n", "STARTED", started=10.0, received=9.0, worker="w1", retries=0)
    assert runs.transition("n", "RECEIVED", received=10.5, worker="w1") == "STARTED"
    runs.transition("n", "RETRY", reason="E: one", retries=1, retry_at=12.0)
    runs.transition("n", "STARTED", started=12.0, received=10.5, worker="w1", retries=1)
    runs.transition("n", "SUCCESS", finished=13.0)
    record = runs.get("n")
    assert record is not None and record.state == "SUCCESS" and record.retries == 1
    attempts = json.loads(record.attempts or "")
    assert [(a["attempt"], a["state"]) for a in attempts] == [(1, "RETRY"), (2, "SUCCESS")]


def test_received_kept_for_later_is_written_and_never_lost(
    core: Core, rclient: redis.Redis
) -> None:
    runs = core.runs
    for n in range(3):
        runs.queued(f"b{n}", "t", source="api")
        runs.pend(runs.build(f"b{n}", "RECEIVED", received=1.0 + n, worker="w", retries=0))
    kept = runs.get("b0")
    assert kept is not None and kept.state == "PENDING"
    # A later transition of a kept run, in the same process (a revoke in the worker's main
    # process), writes the receipt first.
    runs.transition("b1", "REVOKED", finished=9.0, reason="revoked")
    revoked = runs.get("b1")
    assert revoked is not None and revoked.state == "REVOKED"
    assert (revoked.received, revoked.worker) == (2.0, "w")
    # Redis lost its scripts (a restart without persistence): the batch loads it again.
    rclient.script_flush()
    assert runs.flush() == 2
    for n in (0, 2):
        record = runs.get(f"b{n}")
        assert record is not None and record.state == "RECEIVED"
        assert (record.received, record.worker) == (1.0 + n, "w")
    assert runs.flush() == 0


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
