"""Run records written by a real Celery worker: success, failure, retry and revoke."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from forwarder_worker import Core
from forwarder_worker.runs.records import RunLog, RunRecord
from forwarder_worker.schedules.reconcile import apply_schedule
from forwarder_worker.settings import Settings
from support.processes import Proc, celery_worker, eventually, forwarder_env, running

RESULT_LIMIT = 120


@pytest.fixture
def worker(redis_url: str, logs: Path) -> Iterator[Proc]:
    env = forwarder_env(redis_url, FORWARDER_RESULT_MAX_CHARS=str(RESULT_LIMIT))
    with running(celery_worker(env, logs / "worker.log")) as (proc,):
        # Remote control (revoke) reaches only workers that already listen.
        eventually(lambda: " ready." in proc.output(), 60, message="worker ready")
        yield proc


@pytest.fixture
def app(redis_url: str) -> Celery:
    return Core.from_settings(
        Settings(redis_url=redis_url, task_modules=["support.sample_tasks"])
    ).app


@pytest.fixture
def runs(core: Core) -> RunLog:
    return core.runs


def final(runs: RunLog, run_id: str, timeout: float = 30.0) -> RunRecord:
    def check() -> RunRecord | None:
        record = runs.get(run_id)
        return record if record is not None and record.final else None

    result: RunRecord = eventually(check, timeout, message=f"run {run_id} final")
    return result


def test_success_is_recorded_with_a_bounded_result(worker: Proc, app: Celery, runs: RunLog) -> None:
    run_id = app.send_task("forwarder.ping", kwargs={"blob": "x" * 1000}).id
    record = final(runs, run_id)
    assert record.state == "SUCCESS"
    assert record.task == "forwarder.ping"
    assert record.result is not None
    assert len(record.result) <= RESULT_LIMIT
    assert record.result.startswith('{"pong": true')
    assert record.received and record.started and record.finished
    assert record.received <= record.started <= record.finished
    assert record.worker


def test_a_run_waiting_in_the_worker_shows_received_before_it_starts(
    worker: Proc, app: Celery, runs: RunLog
) -> None:
    # The worker holds its runs' RECEIVED writes a few milliseconds to write them together;
    # a run it holds for its countdown must still show RECEIVED, with when and where, long
    # before it starts, and keep that receipt to its end.
    sent = time.time()
    run_id = app.send_task("forwarder.ping", countdown=4).id

    def received() -> RunRecord | None:
        record = runs.get(run_id)
        return record if record is not None and record.state == "RECEIVED" else None

    record: RunRecord = eventually(received, 3, interval=0.01, message="run received")
    assert record.received is not None and sent <= record.received <= time.time()
    assert record.worker and record.started is None
    ended = final(runs, run_id)
    assert ended.state == "SUCCESS"
    assert ended.received == record.received and ended.started is not None
    assert record.received + 3 <= ended.started


def test_a_receipt_written_after_the_run_ended_changes_nothing(
    redis_url: str, logs: Path, app: Celery, runs: RunLog, rclient: redis.Redis
) -> None:
    # A worker holding its RECEIVED writes for a whole second: the run starts and ends before
    # its RECEIVED lands. Its start records the receipt, and the late RECEIVED changes
    # nothing of the final record.
    env = forwarder_env(redis_url, FORWARDER_RECEIVED_WRITE_DELAY="1")
    with running(celery_worker(env, logs / "worker.log")) as (proc,):
        eventually(lambda: " ready." in proc.output(), 60, message="worker ready")
        run_id = app.send_task("forwarder.ping").id
        record = final(runs, run_id)
        held = rclient.hgetall(runs.keys.run(run_id))
        assert record.state == "SUCCESS" and record.worker
        assert record.received and record.started and record.finished
        assert record.received <= record.started <= record.finished
        time.sleep(1.5)  # the RECEIVED, held 1 s from the receipt, has landed
        assert rclient.hgetall(runs.keys.run(run_id)) == held
        assert "RECEIVED transitions not recorded" not in proc.output()


def test_a_worker_stopping_writes_the_receipts_it_holds(
    redis_url: str, logs: Path, app: Celery, runs: RunLog
) -> None:
    # The worker holds its RECEIVED writes for a second and is stopped right after receiving
    # a run (held for its countdown, so it never starts): the run still shows RECEIVED.
    env = forwarder_env(redis_url, FORWARDER_RECEIVED_WRITE_DELAY="1")
    with running(celery_worker(env, logs / "worker.log")) as (proc,):
        eventually(lambda: " ready." in proc.output(), 60, message="worker ready")
        run_id = app.send_task("forwarder.ping", countdown=60).id
        eventually(lambda: f"[{run_id}] received" in proc.output(), 10, message="received")
        proc.stop()
        record = runs.get(run_id)
        assert record is not None and record.state == "RECEIVED"
        assert record.received and record.worker


def test_failure_records_error_type_and_message(worker: Proc, app: Celery, runs: RunLog) -> None:
    record = final(runs, app.send_task("tests.fail", kwargs={"message": "disk full"}).id)
    assert record.state == "FAILURE"
    assert record.error_type == "ValueError"
    assert record.error == "disk full"
    assert record.traceback and "ValueError: disk full" in record.traceback


def test_retry_is_recorded_then_success(
    worker: Proc, app: Celery, runs: RunLog, rclient: redis.Redis
) -> None:
    run_id = app.send_task("tests.flaky", kwargs={"failures": 1}).id
    record = final(runs, run_id)
    assert record.state == "SUCCESS"
    assert record.retries == 1
    assert record.reason is not None and "attempt 1 failed" in record.reason


def test_revoking_a_running_task_records_revoked(worker: Proc, app: Celery, runs: RunLog) -> None:
    run_id = app.send_task("tests.sleep", kwargs={"seconds": 30}).id
    eventually(
        lambda: (r := runs.get(run_id)) is not None and r.state == "STARTED",
        30,
        message="task started",
    )
    app.control.revoke(run_id, terminate=True, signal="SIGTERM")
    record = final(runs, run_id)
    assert record.state == "REVOKED"
    assert record.reason == "terminated"


def test_revoking_a_queued_task_records_revoked(worker: Proc, app: Celery, runs: RunLog) -> None:
    run_id = str(uuid.uuid4())
    app.control.revoke(run_id)
    app.send_task("forwarder.ping", task_id=run_id, countdown=2)
    record = final(runs, run_id)
    assert record.state == "REVOKED"


def test_scheduled_runs_feed_per_schedule_history_and_counters(
    worker: Proc, app: Celery, core: Core
) -> None:
    runs = core.runs
    # A schedule's keys are kept only while its entry exists (no beat runs it here).
    raw = {"task": "forwarder.ping", "schedule": {"every": "1h"}}
    assert apply_schedule(core.store, "team", "job", raw, uid="u").ready
    ids = []
    for task in ("forwarder.ping", "tests.fail", "forwarder.ping"):
        run_id = str(uuid.uuid4())
        runs.queued(run_id, task, source="schedule", schedule="team/job", slot=1000.0)
        app.send_task(task, task_id=run_id)
        ids.append(run_id)
        final(runs, run_id)
    summary = runs.summary("team/job", limit=2)
    assert summary.total == 3
    assert summary.succeeded == 2
    assert summary.failed == 1
    assert [r.id for r in summary.recent] == [ids[2], ids[1]]
    assert summary.last_run is not None and summary.last_run.id == ids[2]
    assert summary.last_schedule_time == 1000.0
    assert summary.last_successful_time is not None
    assert runs.active(["team/job"]) == {"team/job": []}  # none still going
    assert "team/job" in runs.take_changed()
    assert runs.take_changed() == set()
    assert {r.id for r in runs.recent(schedule="team/job", state="FAILURE")} == {ids[1]}
    assert {r.task for r in runs.recent(task="tests.fail")} == {"tests.fail"}


def test_history_read_while_runs_are_recorded_lists_each_run_once(redis_url: str) -> None:
    # History is read in pages by rank. A run recorded between two page reads pushes older
    # runs down a rank, so a page can start with runs already read: each must be listed
    # once (beat's test harness once saw a schedule's first firing twice). The global
    # history is not capped here: the runs recorded meanwhile must not push the wanted out.
    core = Core.from_settings(Settings(redis_url=redis_url, global_history_limit=10**9))
    runs = core.runs
    wanted = [f"wanted-{n}" for n in range(10)]
    for n in range(1000):
        run_id = wanted[n // 100] if n % 100 == 50 else f"noise-{n}"
        runs.queued(run_id, "tests.wanted" if run_id in wanted else "tests.noise", source="api")
    stop = threading.Event()

    def record_more() -> None:
        n = 0
        while not stop.is_set():
            runs.queued(f"new-{n}", "tests.noise", source="api")
            n += 1

    inserter = threading.Thread(target=record_more)
    inserter.start()
    try:
        for _ in range(20):
            found = [r.id for r in runs.recent(task="tests.wanted", limit=50)]
            assert sorted(found) == sorted(wanted), found
    finally:
        stop.set()
        inserter.join()
        core.close()
