"""End to end on real processes: a schedule in the store fires on a real beat and worker.

Covers: an ``every: 1s`` schedule runs at least 3 times within about 4 s and the run records
say so; suspend stops it, resume restarts it, delete stops it; changing the interval takes
effect without a restart.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from forwarder_worker import Core
from forwarder_worker.runs.records import RunLog
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.store import Entry
from support.processes import celery_beat, celery_worker, eventually, forwarder_env, running

NAME = "default/heartbeat"


@pytest.fixture
def stack(redis_url: str, logs: Path) -> Iterator[None]:
    env = forwarder_env(redis_url)
    worker = celery_worker(env, logs / "worker.log")
    beat = celery_beat(env, logs / "beat.log")
    with running(worker, beat):
        eventually(lambda: " ready." in worker.output(), 60, message="worker ready")
        eventually(lambda: "acquired the lock" in beat.output(), 60, message="beat ready")
        yield


def entry(every: str, generation: int = 1, suspend: bool = False) -> Entry:
    spec = parse_spec({"task": "forwarder.ping", "schedule": {"every": every}, "suspend": suspend})
    return Entry.from_spec(NAME, spec, uid="uid-heartbeat", generation=generation)


def successes(runs: RunLog) -> int:
    return runs.summary(NAME).succeeded


def sent(runs: RunLog) -> int:
    """Runs sent so far: those ended and those still going."""
    return runs.summary(NAME).total + len(runs.active([NAME])[NAME])


def test_every_second_runs_suspends_resumes_changes_and_stops(stack: None, core: Core) -> None:
    # Each change as the operator or the folder source writes it: a new generation of the spec.
    store, runs = core.store, core.runs
    start = time.monotonic()
    store.upsert(entry("1s"))
    eventually(lambda: successes(runs) >= 3, 15, message="3 successful runs")
    # About 4 s on an idle machine; the bound is loose because CI machines are shared.
    assert time.monotonic() - start < 12
    summary = runs.summary(NAME, limit=10)
    slots = sorted(r.slot for r in summary.recent if r.slot is not None)
    assert len(slots) == len(set(slots)), "a slot fired twice"
    assert all(abs((b - a) - 1.0) < 1e-6 for a, b in itertools.pairwise(slots))
    assert summary.last_run is not None and summary.last_run.schedule == NAME

    # Suspend: nothing more is sent.
    store.upsert(entry("1s", generation=2, suspend=True))
    time.sleep(0.5)  # a firing already published may still finish
    before_suspend = sent(runs)
    time.sleep(2.5)
    assert sent(runs) == before_suspend

    # Resume: it runs again, without a burst for the slots missed while suspended.
    before = runs.summary(NAME).total
    store.upsert(entry("1s", generation=3))
    eventually(lambda: runs.summary(NAME).total >= before + 2, 10, message="runs after resume")
    assert runs.summary(NAME).total <= before + 4

    # A new interval takes effect without restarting beat.
    store.upsert(entry("3s", generation=4))
    time.sleep(1.0)
    counted = runs.summary(NAME).total
    time.sleep(4.0)
    assert 1 <= runs.summary(NAME).total - counted <= 2

    # Delete: it stops, and its history and counters go with it (its runs' records stay in
    # the global history until they expire).
    store.delete(NAME)
    assert runs.summary(NAME).total == 0
    time.sleep(0.5)

    def ever_sent() -> int:
        return sum(r.schedule == NAME for r in runs.recent(limit=100_000))

    gone = ever_sent()
    assert gone > 0
    time.sleep(3.5)
    assert ever_sent() == gone
