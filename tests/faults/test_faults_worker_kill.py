"""Worker kill -9 mid-task: the run is redelivered and completes (at-least-once).

Two cases, because they recover through different mechanisms:

* the pool child running the task is SIGKILLed (the OOM killer's usual victim): the worker's
  main process sees WorkerLostError and, with ``task_acks_late`` and
  ``task_reject_on_worker_lost``, puts the message back at once;
* the whole worker (main process and children) is SIGKILLed: the message stays unacked in
  Redis until the broker's visibility timeout (``2 * FORWARDER_TASK_TIME_LIMIT + 60`` s) has
  passed, and the next worker to start restores it. The test sets the time limit to 2 s so
  that wait is 64 s instead of the default 21 minutes.

Along the way a ``concurrencyPolicy: Forbid`` schedule fires every second with a task that
runs longer than that: its runs never overlap, even across the redelivery.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import redis
from forwarder_worker import Core
from forwarder_worker.runs.records import RunLog, RunRecord
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.store import Entry
from forwarder_worker.settings import Settings
from support.processes import (
    alive_pids,
    celery_beat,
    celery_worker,
    descendants,
    eventually,
    forwarder_env,
    running,
)
from support.scheduler_harness import stop_firing

FORBID = "default/exclusive"


def _started(runs: RunLog, run_id: str) -> bool:
    record = runs.get(run_id)
    return record is not None and record.state == "STARTED"


def _assert_no_overlap(records: list[RunRecord]) -> None:
    spans = sorted((r.started, r.finished) for r in records if r.started is not None and r.finished)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.05, f"two Forbid runs overlapped: {spans}"


@pytest.mark.slow
def test_pool_child_killed_mid_task_is_redelivered_and_forbid_never_overlaps(
    redis_url: str, core: Core, logs: Path
) -> None:
    env = forwarder_env(redis_url, FORWARDER_RUN_HISTORY_LIMIT="1000")
    worker = celery_worker(env, logs / "worker.log", concurrency=1)
    beat = celery_beat(env, logs / "beat.log")
    store, runs = core.store, core.runs
    with running(worker, beat):
        eventually(lambda: " ready." in worker.output(), 90, message="worker ready")
        eventually(lambda: "acquired the lock" in beat.output(), 90, message="beat ready")
        spec = parse_spec(
            {
                "task": "tests.sleep",
                "kwargs": {"seconds": 2.5},
                "schedule": {"every": "1s"},
                "concurrencyPolicy": "Forbid",
            }
        )
        store.upsert(Entry.from_spec(FORBID, spec, uid="uid-exclusive", generation=1))
        # Wait for a Forbid run to be running, then kill the pool child that runs it.
        victim: RunRecord = eventually(
            lambda: next(
                (r for r in runs.recent(schedule=FORBID, limit=50) if r.state == "STARTED"),
                None,
            ),
            60,
            0.02,
            message="a Forbid run started",
        )
        children = alive_pids(descendants(worker.pid))
        assert len(children) == 1, children
        os.kill(children.pop(), signal.SIGKILL)
        killed_at = time.time()
        done: RunRecord = eventually(
            lambda: (r := runs.get(victim.id)) is not None and r.final and r,
            60,
            message="the killed run finishing",
        )
        assert done.state == "SUCCESS", done
        assert done.started is not None and done.started > killed_at, "not redelivered"
        assert "WorkerLostError" in worker.output() or "exited" in worker.output()
        # Keep firing a few more seconds, then compare every Forbid run's span.
        time.sleep(4)
        stop_firing(store, FORBID)
        eventually(lambda: not runs.active([FORBID])[FORBID], 30, message="Forbid runs drained")
    records = runs.recent(schedule=FORBID, limit=1000)
    assert sum(r.state == "SKIPPED" for r in records) >= 2, "Forbid never had to skip"
    _assert_no_overlap([r for r in records if r.state == "SUCCESS"])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_whole_worker_killed_mid_task_is_redelivered_after_visibility_timeout(
    redis_url: str, rclient: redis.Redis, logs: Path
) -> None:
    time_limit = 2
    env = forwarder_env(redis_url, FORWARDER_TASK_TIME_LIMIT=str(time_limit))
    core = Core.from_settings(Settings(redis_url=redis_url, task_time_limit=time_limit))
    runs, app = core.runs, core.app
    visibility = app.conf.broker_transport_options["visibility_timeout"]
    assert visibility == 2 * time_limit + 60
    first = celery_worker(env, logs / "worker-1.log", concurrency=1, name="first")
    with running(first):
        eventually(lambda: " ready." in first.output(), 90, message="first worker ready")
        run_id = str(uuid.uuid4())
        runs.queued(run_id, "tests.sleep", source="api")
        sent_at = time.time()
        app.send_task("tests.sleep", kwargs={"seconds": 1.5}, task_id=run_id)
        eventually(lambda: _started(runs, run_id), 60, 0.01, message="the run started")
        first.signal(signal.SIGKILL)  # the whole process group, main process included
        first.popen.wait(10)
    assert runs.get(run_id).state == "STARTED"  # type: ignore[union-attr]

    # Before the visibility timeout, nobody takes the message again: start the replacement
    # worker only once it has passed (a worker restores old unacked messages when it starts,
    # and then only every unacked_restore_interval * throttle seconds).
    time.sleep(max(0.0, sent_at + visibility + 1 - time.time()))
    second = celery_worker(env, logs / "worker-2.log", concurrency=1, name="second")
    with running(second):
        done: RunRecord = eventually(
            lambda: (r := runs.get(run_id)) is not None and r.final and r,
            90,
            message="the run redelivered to the new worker",
        )
    assert done.state == "SUCCESS", done
    assert done.worker is not None and done.worker.startswith("second-"), done.worker
