"""Redis restarts under a running stack, with and without persistence.

* Without persistence (a bare Redis pod restarted): every key is gone. The worker, beat and the
  local folder source reconnect by themselves (same processes, nobody restarts them), the
  source re-creates the entry within its resync interval, and runs succeed again.
* With AOF persistence, restarted mid-firing (SIGKILL with ``appendfsync always``; SIGTERM,
  as a pod deletion sends, with the chart's ``everysec``): every entry and every run record
  written before the stop is still there, final states unchanged, and firing carries on.

Redis is restarted on the same port, as a Service in front of a restarted pod would be.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from forwarder_operator.folder import RESYNC_SECONDS
from forwarder_worker import Core
from forwarder_worker.runs.records import RunLog
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.store import Entry, ScheduleStore
from forwarder_worker.settings import Settings
from support.processes import (
    BIN,
    STEADY_SCHEDULE,
    celery_beat,
    celery_worker,
    eventually,
    forwarder_env,
    running,
    start,
)
from support.valkey_process import ValkeyProcess, valkey


def _succeeded(runs: RunLog, name: str) -> int:
    try:
        return runs.summary(name).succeeded
    except redis.ConnectionError:
        return 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_restart_without_persistence_everything_reconnects(tmp_path: Path, logs: Path) -> None:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "steady.yaml").write_text(STEADY_SCHEDULE)
    with valkey(tmp_path / "redis") as server:
        env = forwarder_env(server.url)
        worker = celery_worker(env, logs / "worker.log")
        beat = celery_beat(env, logs / "beat.log")
        source = start(
            [str(BIN / "python"), "-m", "forwarder_operator.folder", "--dir", str(folder)],
            env,
            logs / "folder.log",
            "folder",
        )
        core = Core.from_settings(Settings(redis_url=server.url))
        with running(worker, beat, source):
            eventually(lambda: " ready." in worker.output(), 90, message="worker ready")
            eventually(lambda: _succeeded(core.runs, "default/steady") >= 2, 60, message="runs")
            pids = [p.pid for p in (worker, beat, source)]

            server.restart(downtime=2.0)
            restarted_at = time.monotonic()
            # The folder source re-creates the entry on its next resync pass.
            store = core.store
            eventually(
                lambda: "default/steady" in store.names(),
                RESYNC_SECONDS + 20,
                0.1,
                message="the entry re-created",
            )
            assert time.monotonic() - restarted_at <= RESYNC_SECONDS + 20
            # Beat and worker pick it up without being restarted.
            eventually(
                lambda: _succeeded(core.runs, "default/steady") >= 2,
                60,
                message="runs after the restart",
            )
            assert [p.pid for p in (worker, beat, source)] == pids
            assert all(p.alive() for p in (worker, beat, source))
            assert "Redis unavailable" in beat.output()
        core.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_restart_with_aof_loses_no_entry_and_no_run_record(tmp_path: Path, logs: Path) -> None:
    with valkey(tmp_path / "redis", appendonly=True, appendfsync="always") as server:
        env = forwarder_env(server.url, FORWARDER_RUN_HISTORY_LIMIT="1000")
        worker = celery_worker(env, logs / "worker.log")
        beat = celery_beat(env, logs / "beat.log")
        client = server.client()
        core = Core.from_settings(Settings(redis_url=server.url))
        store, runs = core.store, core.runs
        with running(worker, beat):
            eventually(lambda: " ready." in worker.output(), 90, message="worker ready")
            # A few entries firing every second, and many that wait (or are suspended).
            for i in range(20):
                every = "1s" if i < 3 else "1h"
                spec = parse_spec(
                    {
                        "task": "forwarder.ping",
                        "schedule": {"every": every},
                        "suspend": i % 5 == 4,
                    }
                )
                store.upsert(
                    Entry.from_spec(f"default/aof-{i}", spec, uid=f"uid-{i}", generation=i + 1)
                )
            eventually(
                lambda: all(runs.summary(f"default/aof-{i}").succeeded >= 3 for i in range(3)),
                60,
                message="runs before the crash",
            )
            # fsync on every write survives even SIGKILL; the chart's everysec survives a
            # pod deletion (SIGTERM makes Redis flush the AOF before it exits).
            for appendfsync, graceful in (("always", False), ("everysec", True)):
                server.appendfsync = appendfsync
                _restart_and_compare(server, store, runs, graceful=graceful)
                # And the stack carries on.
                counted = runs.summary("default/aof-0").succeeded
                eventually(
                    lambda counted=counted: runs.summary("default/aof-0").succeeded >= counted + 2,
                    60,
                    message=f"runs after the restart ({appendfsync})",
                )
        client.close()


def _restart_and_compare(
    server: ValkeyProcess, store: ScheduleStore, runs: RunLog, *, graceful: bool
) -> None:
    """Snapshot entries and run records, restart Redis at once while beat and worker keep
    writing, and check that nothing in the snapshot was lost."""
    before_entries = {s.entry.name: (s.entry, s.rev) for s in store.entries()}
    before_runs = {r.id: r for r in runs.recent(limit=10000)}
    server.restart(graceful=graceful)
    after_entries = {s.entry.name: (s.entry, s.rev) for s in store.entries()}
    assert set(after_entries) == set(before_entries)
    for name, (entry, rev) in before_entries.items():
        assert after_entries[name][0] == entry, name
        assert int(after_entries[name][1]) >= int(rev), name
    after_ids = set(runs.client.zrange("forwarder:runs", 0, -1))
    assert set(before_runs) <= after_ids, "run ids lost from the history"
    for run_id, record in before_runs.items():
        now = runs.get(run_id)
        assert now is not None, f"run record {run_id} lost"
        if record.final:
            assert now.state == record.state, (run_id, record.state, now.state)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_worker_survives_a_restart_while_a_task_is_in_flight(tmp_path: Path, logs: Path) -> None:
    # With acks_late, a running task is an unacknowledged delivery: when Redis drops, Celery
    # 5.7 tries to restore it twice while closing the lost connection, and the second try used
    # to end the worker ("Unrecoverable error: AttributeError ... 'hostname'").
    with valkey(tmp_path / "redis") as server:
        env = forwarder_env(server.url)
        worker = celery_worker(env, logs / "worker.log", concurrency=1)
        client = server.client()
        with running(worker):
            eventually(lambda: " ready." in worker.output(), 90, message="worker ready")
            app = Core.from_settings(Settings(redis_url=server.url)).app
            app.send_task("tests.sleep", kwargs={"seconds": 4.0})
            eventually(lambda: "tests.sleep" in worker.output(), 30, message="task started")
            server.restart(downtime=1.0)
            eventually(
                lambda: "re-establish the connection" in worker.output(),
                30,
                message="the worker noticing the lost connection",
            )
            # Same process, reconnected, and running new work.
            client = server.client()
            reply = app.send_task("forwarder.ping")
            # get() also ends the result's pub/sub subscription while Redis is up; left to
            # AsyncResult.__del__, the unsubscribe would meet a stopped server later on.
            assert reply.get(timeout=60)["pong"] is True
            runs = Core.from_settings(Settings(redis_url=server.url)).runs
            eventually(
                lambda: (r := runs.get(reply.id)) is not None and r.state == "SUCCESS",
                60,
                0.2,
                message="a task after the restart",
            )
            assert worker.alive(), worker.output()[-3000:]
            assert "Unrecoverable error" not in worker.output()
            app.close()
        client.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("seconds", "downtime"),
    [(4.0, 1.0), (1.0, 2.5)],
    ids=["redis-back-before-the-run-ends", "run-ends-while-redis-is-down"],
)
def test_a_run_in_flight_when_redis_is_killed_still_ends_in_success(
    tmp_path: Path, logs: Path, seconds: float, downtime: float
) -> None:
    # At least once across a Redis crash: a run executing when Redis is SIGKILLed (AOF with
    # fsync always, so nothing Redis acknowledged is lost) must still succeed, by finishing
    # where it runs or by redelivery. Cancelling it on the connection loss, as Celery's
    # worker_cancel_long_running_tasks_on_connection_loss does, recorded it REVOKED and
    # acknowledged its message, so it never ran again (found by the chaos soak). A run that
    # ends while Redis is still down must wait to store its end: Celery's default retries
    # only the result's SET, and the read before it made such a run FAILURE.
    with valkey(tmp_path / "redis", appendonly=True, appendfsync="always") as server:
        env = forwarder_env(server.url, FORWARDER_TASK_TIME_LIMIT="30")
        worker = celery_worker(env, logs / "worker.log", concurrency=1)
        with running(worker):
            eventually(lambda: " ready." in worker.output(), 90, message="worker ready")
            core = Core.from_settings(Settings(redis_url=server.url))
            sent = core.app.send_task("tests.sleep", kwargs={"seconds": seconds})
            eventually(
                lambda: (r := core.runs.get(sent.id)) is not None and r.state == "STARTED",
                30,
                0.05,
                message="the run started",
            )
            server.restart(downtime=downtime)
            record = eventually(
                lambda: (r := core.runs.get(sent.id)) is not None and r.final and r,
                # The visibility timeout (2 x the 30 s time limit + 60 s) bounds a redelivery.
                150,
                0.5,
                message="the run ended",
            )
            assert record.state == "SUCCESS", (record, worker.output()[-3000:])
            assert worker.alive(), worker.output()[-3000:]
            # ...and it ran once: its message is acknowledged, neither left unacked (to be
            # redelivered after the visibility timeout) nor put back on the queue.
            plain = redis.Redis.from_url(server.url)
            eventually(
                lambda: not plain.exists("forwarder:unacked", "forwarder:default"),
                10,
                0.1,
                message="the message acknowledged",
            )
            assert worker.output().count(" received") == 1, worker.output()[-3000:]
            plain.close()
            core.close()
