"""Bounded storage, on a real Redis with a real worker (docs/reliability.md, "Bounded storage"):

* runs put through the worker leave Redis with as many keys and as much memory after 2N runs
  as after N, once their records have expired: every key a run writes is capped or expires;
* deleting a schedule leaves no key named after it, even when a run of it ends after the
  delete (the run transition writes no per-schedule key once the entry is gone).

The 100,000-run version of the first is bench/bounded_storage.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from forwarder_worker import Core
from forwarder_worker._redis.keys import glob_escape
from forwarder_worker._redis.scripts import RunWrite
from forwarder_worker.dispatch.dispatcher import Firing
from forwarder_worker.local.cli import flower_limits
from forwarder_worker.runs.records import RunRecord
from forwarder_worker.schedules.reconcile import apply_schedule
from forwarder_worker.settings import Settings
from support.bounded_load import Load, create_schedules, expired
from support.processes import Proc, celery_worker, eventually, forwarder_env, running

PREFIX = "forwarder:"
TTL = 3
GLOBAL_LIMIT = 100
SCHEDULE_LIMIT = 20
RUNS = 1500  # per half: the plateau is checked after RUNS and 2 * RUNS runs
LIMITS = {
    "result_expires": TTL,
    "global_history_limit": GLOBAL_LIMIT,
    "run_history_limit": SCHEDULE_LIMIT,
}


@pytest.fixture
def limited(redis_url: str) -> Iterator[Core]:
    """A Core with low limits (the worker gets the same), so runs expire within the test."""
    core = Core.from_settings(Settings(redis_url=redis_url, **LIMITS))
    yield core
    core.close()


@pytest.fixture
def worker(redis_url: str, logs: Path) -> Iterator[Proc]:
    env = forwarder_env(redis_url, **{f"FORWARDER_{k.upper()}": str(v) for k, v in LIMITS.items()})
    with running(celery_worker(env, logs / "worker.log", concurrency=2)) as (proc,):
        eventually(lambda: " ready." in proc.output(), 60, message="worker ready")
        yield proc


def test_keys_and_memory_level_off(worker: Proc, limited: Core) -> None:
    names = create_schedules(limited, 3)
    load = Load(limited, names)
    began = time.monotonic()
    load.fire(RUNS)
    load.drain()
    first = expired(limited, RUNS, began)
    load.fire(RUNS)
    load.drain()
    second = expired(limited, 2 * RUNS, began)
    assert second.keys <= first.keys + 2, (first, second)
    assert second.used_memory <= first.used_memory * 1.1, (first, second)
    client = limited.client
    assert client.zcard(f"{PREFIX}runs") <= GLOBAL_LIMIT
    for name in names:
        stats = limited.runs.summary(name)
        assert stats.succeeded == 2 * RUNS // len(names)  # counters are not capped
        assert client.zcard(limited.keys.schedule_runs(name)) <= SCHEDULE_LIMIT


def test_a_deleted_schedule_leaves_no_key_even_when_its_run_ends_after(
    worker: Proc, core: Core, rclient: redis.Redis
) -> None:
    name = "team/brief"
    raw = {"task": "tests.sleep", "kwargs": {"seconds": 2}, "schedule": {"every": "1h"}}
    assert apply_schedule(core.store, "team", "brief", raw, uid="u").ready
    stored = core.store.get(name)
    assert stored is not None

    def run_now() -> str:
        (outcome,) = core.dispatcher.fire([Firing(stored.entry, time.time(), "trigger")])
        assert outcome.sent
        return outcome.run_id

    def state(run_id: str) -> str | None:
        record = core.runs.get(run_id)
        return record.state if record else None

    done = run_now()
    eventually(lambda: state(done) == "SUCCESS", 30, message="first run ended")
    assert rclient.exists(core.keys.schedule_stats(name))
    in_flight = run_now()
    eventually(lambda: state(in_flight) == "STARTED", 30, message="second run started")
    core.store.delete(name)
    eventually(lambda: state(in_flight) == "SUCCESS", 30, message="second run ended")
    record: RunRecord | None = core.runs.get(in_flight)
    assert record is not None and record.schedule == name  # the record itself stays (ttl)

    assert list(rclient.scan_iter(match=f"*{glob_escape(name)}*", count=1000)) == []
    for key in (core.keys.changed, core.keys.index, core.keys.due):
        members = rclient.smembers(key) if key != core.keys.due else rclient.zrange(key, 0, -1)
        assert not [m for m in members if name in m], key
    for key in (core.keys.run_now, core.keys.resume, core.keys.backfill):
        assert not rclient.hexists(key, name)


def test_histories_drop_ids_older_than_the_record_ttl(redis_url: str) -> None:
    core = Core.from_settings(Settings(redis_url=redis_url, result_expires=60))
    try:
        raw = {"task": "forwarder.ping", "schedule": {"every": "1h"}}
        assert apply_schedule(core.store, "team", "aging", raw, uid="u").ready
        fields = ["task", "forwarder.ping", "schedule", "team/aging", "source", "trigger"]
        core.scripts.transition(RunWrite("old", "PENDING", fields), 1000.0)
        core.scripts.transition(RunWrite("new", "PENDING", fields), 1061.0)
        assert core.client.zrange(core.keys.runs, 0, -1) == ["new"]
        assert core.client.zrange(core.keys.schedule_runs("team/aging"), 0, -1) == ["new"]
        # The schedule's history and active set go a ttl after its last run was created.
        assert 0 < core.client.ttl(core.keys.schedule_runs("team/aging")) <= 60
        assert 0 < core.client.ttl(core.keys.active_runs("team/aging")) <= 60
    finally:
        core.close()


def test_the_durations_hash_holds_at_most_duration_task_limit_tasks_worth(
    redis_url: str,
) -> None:
    core = Core.from_settings(Settings(redis_url=redis_url, duration_task_limit=1))
    try:
        tasks = [f"task{i}" for i in range(30)]
        for i, task in enumerate([*tasks, "task0"]):
            core.runs.queued(f"r{i}", task, source="api")
            core.runs.transition(f"r{i}", "STARTED", started=10.0)
            core.runs.transition(f"r{i}", "SUCCESS", finished=10.0 + i)
        fields = core.client.hlen(core.keys.durations)
        assert 0 < fields <= core.limits.duration_fields
        durations = core.runs.durations()
        assert "task29" not in durations  # first seen once the hash was full
        assert sum(v for k, v in durations["task0"].items() if k.startswith("le_")) == 2
        assert core.runs.get("r29") is not None  # the run itself is recorded
    finally:
        core.close()


def test_a_heartbeat_prunes_workers_dead_for_long(core: Core, rclient: redis.Redis) -> None:
    rclient.zadd(core.keys.workers, {"killed@pod-1": time.time() - 3600})
    core.workers.beat("alive@pod-2")
    assert rclient.zrange(core.keys.workers, 0, -1) == ["alive@pod-2"]


def test_flower_keeps_at_most_the_tasks_and_workers_settings_say() -> None:
    settings = Settings(flower_max_tasks=500, flower_max_workers=7)
    assert flower_limits(settings, ()) == ["--max_tasks=500", "--max_workers=7"]
    # An operator's own value on the command line wins.
    assert flower_limits(settings, ["--max-tasks=9"]) == ["--max_workers=7"]
    assert flower_limits(Settings(), ()) == ["--max_tasks=10000", "--max_workers=100"]
