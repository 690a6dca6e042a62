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
from forwarder_worker.dispatch.dispatcher import Firing
from forwarder_worker.runs.records import RunRecord
from forwarder_worker.schedules.reconcile import apply_schedule
from forwarder_worker.settings import Settings
from support.bounded_load import Footprint, Load, create_schedules, footprint
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


def settled(core: Core, runs: int, began: float) -> Footprint:
    """Redis's footprint once every run record and Celery result of the load has expired."""
    client = core.client
    time.sleep(TTL + 1)

    def expired() -> bool:
        # SCAN also expires the keys it meets, so the count does not wait for Redis's cycle.
        return not any(
            True
            for pattern in (f"{PREFIX}run:*", f"{PREFIX}celery-task-meta-*")
            for _ in client.scan_iter(match=pattern, count=1000)
        )

    eventually(expired, 30, 0.5, message="run records and results expired")
    return footprint(core, runs, began)


def test_keys_and_memory_level_off(worker: Proc, limited: Core) -> None:
    names = create_schedules(limited, 3)
    load = Load(limited, names)
    began = time.monotonic()
    load.fire(RUNS)
    load.drain()
    first = settled(limited, RUNS, began)
    load.fire(RUNS)
    load.drain()
    second = settled(limited, 2 * RUNS, began)
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
