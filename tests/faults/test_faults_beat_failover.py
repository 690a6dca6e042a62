"""Beat failover: kill -9 the lock holder while ``every: 1s`` schedules fire.

Two real beats share one Redis; one holds the lock. The holder is killed with SIGKILL (no
release), and the standby must take the lock within ``FORWARDER_BEAT_LOCK_TIMEOUT`` + 1 s of
the kill. The run records must then show every slot of every schedule fired at most once,
and no slot missing outside the handover gap (between the kill and the takeover, where the
Kubernetes CronJob rule fires only the latest missed slot).
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import pytest
import redis
from forwarder_worker import Core
from forwarder_worker.runs.records import RunLog
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.store import Entry
from support.processes import celery_beat, celery_worker, eventually, forwarder_env, running
from support.scheduler_harness import stop_firing

LOCK_TIMEOUT = 3.0
NAMES = [f"default/tick-{i}" for i in range(3)]
LOCK_KEY = "forwarder::lock"


def _slots(runs: RunLog, name: str) -> list[float]:
    return [r.slot for r in runs.recent(schedule=name, limit=1000) if r.slot is not None]


@pytest.mark.slow
def test_standby_takes_over_without_double_or_lost_slots(
    redis_url: str, rclient: redis.Redis, core: Core, logs: Path
) -> None:
    env = forwarder_env(
        redis_url,
        FORWARDER_BEAT_LOCK_TIMEOUT=str(LOCK_TIMEOUT),
        FORWARDER_RUN_HISTORY_LIMIT="1000",
    )
    worker = celery_worker(env, logs / "worker.log", concurrency=2)
    beats = [celery_beat(env, logs / f"beat-{i}.log", name=f"beat-{i}") for i in range(2)]
    store, runs = core.store, core.runs
    with running(worker, *beats):
        eventually(lambda: " ready." in worker.output(), 90, message="worker ready")
        holder = eventually(
            lambda: next((b for b in beats if "acquired the lock" in b.output()), None),
            90,
            message="a beat holding the lock",
        )
        standby = next(b for b in beats if b is not holder)
        eventually(lambda: "beat: Starting" in standby.output(), 90, message="standby up")
        for index, name in enumerate(NAMES):
            spec = parse_spec({"task": "forwarder.ping", "schedule": {"every": "1s"}})
            store.upsert(Entry.from_spec(name, spec, uid=f"uid-{index}", generation=1))
        eventually(
            lambda: all(len(_slots(runs, n)) >= 4 for n in NAMES), 30, message="firing before"
        )
        assert "acquired the lock" not in standby.output()

        token = rclient.get(LOCK_KEY)
        assert token
        holder.signal(signal.SIGKILL)
        killed_at = time.time()
        # The standby's lock token replaces the dead holder's one.
        eventually(
            lambda: rclient.get(LOCK_KEY) not in (None, token),
            LOCK_TIMEOUT + 30,
            0.02,
            message="the standby taking the lock",
        )
        took_over_at = time.time()
        assert took_over_at - killed_at <= LOCK_TIMEOUT + 1.0, (
            f"takeover took {took_over_at - killed_at:.2f}s"
        )
        eventually(lambda: "acquired the lock" in standby.output(), 10, message="standby log")

        # Let the new holder fire for a while, then stop firing and let the worker drain.
        eventually(
            lambda: all(any(s > took_over_at + 3 for s in _slots(runs, n)) for n in NAMES),
            30,
            message="firing after the takeover",
        )
        for name in NAMES:
            stop_firing(store, name)
        standby.stop()
        eventually(lambda: not any(runs.active(NAMES).values()), 60, message="every run finished")

    for name in NAMES:
        records = runs.recent(schedule=name, limit=1000)
        slots = sorted(r.slot for r in records if r.slot is not None)
        assert len(slots) == len(set(slots)), f"{name}: a slot was dispatched twice"
        assert all(r.state == "SUCCESS" for r in records), [
            (r.slot, r.state) for r in records if r.state != "SUCCESS"
        ]
        # Every whole-second slot from the first to the last fired, except in the gap
        # between the kill (the last slot the old holder could have fired) and the takeover.
        expected = {round(slots[0] + k, 3) for k in range(round(slots[-1] - slots[0]) + 1)}
        missing = sorted(expected - {round(s, 3) for s in slots})
        gap_start, gap_end = math.floor(killed_at) - 1, math.ceil(took_over_at) + 1
        outside = [s for s in missing if not gap_start <= s <= gap_end]
        assert not outside, f"{name}: slots lost outside the handover gap: {outside}"
        assert any(s < killed_at for s in slots) and any(s > took_over_at for s in slots)
