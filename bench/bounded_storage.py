"""Benchmark 8, bounded storage: Redis's key count and memory while N runs go through a
real worker, and after.

``python bench/bounded_storage.py [--runs N] [--ttl S]`` (N = 100,000, S = 60 by default), or
``python bench/run.py --only bounded_storage [--full]`` (quick: 6,000 runs kept 5 s, enough
to reach and show the plateau within the quick mode's 10 minutes; 100,000 kept 60 s with
``--full``). There is no anchor: the question is whether the figures level off.

A fresh Valkey, one Forwarder worker (prefork, concurrency 2) running ``forwarder.ping``,
and ten schedules whose runs are fired through the dispatcher as run-now triggers, in
batches, with at most 400 messages waiting (tests/support/bounded_load.py, the load of
tests/worker/test_bounded_storage.py). Every limit is at its default except the record TTL
(``FORWARDER_RESULT_EXPIRES``), S seconds instead of 7 days, so that records expire within
the run: with the default, the same plateau is reached after 7 days, at 7 days of runs.
DBSIZE and ``INFO memory`` ``used_memory`` are sampled every twentieth of the runs, while
the load goes on (the steady state: about S seconds of runs alive), then once the worker has
drained, and again once every record and result of the load has expired (what stays: the
capped histories, the counters, the entries, kombu's own keys).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from forwarder_worker import Core, Settings
from harness import commit, redis_for, start_worker, work_dir, write_result
from support.bounded_load import (
    Footprint,
    Load,
    create_schedules,
    expired,
    footprint,
)

QUICK_RUNS = 6_000
QUICK_TTL = 5
FULL_RUNS = 100_000
TTL = 60
SCHEDULES = 10
SAMPLES = 20


def _show(label: str, figure: Footprint) -> None:
    print(
        f"{label:>10}: {figure.runs:>7,} runs, {figure.keys:>6,} keys, "
        f"{figure.used_memory / 1e6:6.1f} MB, {figure.seconds:5.0f} s",
        flush=True,
    )


def measure(runs: int, ttl: int) -> dict[str, Any]:
    """Put ``runs`` runs through a worker with records kept ``ttl`` seconds."""
    with redis_for("bounded") as url:
        settings = Settings(redis_url=url, result_expires=ttl)
        core = Core.from_settings(settings)
        worker = start_worker(
            url, work_dir("bounded_storage") / "worker.log", FORWARDER_RESULT_EXPIRES=str(ttl)
        )
        try:
            load = Load(core, create_schedules(core, SCHEDULES), batch=200, backlog=400)
            began = time.monotonic()
            empty = footprint(core, 0, began)
            _show("empty", empty)
            samples = []
            step = max(1, runs // SAMPLES)
            while load.fired < runs:
                load.fire(min(step, runs - load.fired))
                samples.append(footprint(core, load.fired, began))
                _show("loading", samples[-1])
            load.drain(timeout=600)
            drained = footprint(core, runs, began)
            _show("drained", drained)
            settled = expired(core, runs, began)
            _show("expired", settled)
            history = core.client.zcard(core.keys.runs)
        finally:
            worker.stop()
            core.close()
    # The steady state: the samples once a whole ttl of runs has gone by.
    steady = [s for s in samples if s.seconds >= ttl + samples[0].seconds]
    return {
        "runs": runs,
        "ttl_seconds": ttl,
        "schedules": SCHEDULES,
        "limits": {
            "global_history_limit": settings.global_history_limit,
            "run_history_limit": settings.run_history_limit,
            "duration_task_limit": settings.duration_task_limit,
        },
        "runs_per_second": round(runs / (drained.seconds or 1), 1),
        "empty": empty.as_json(),
        "samples": [s.as_json() for s in samples],
        "steady": {
            "samples": len(steady),
            "keys_min": min((s.keys for s in steady), default=None),
            "keys_max": max((s.keys for s in steady), default=None),
            "used_memory_min": min((s.used_memory for s in steady), default=None),
            "used_memory_max": max((s.used_memory for s in steady), default=None),
        },
        "drained": drained.as_json(),
        "expired": settled.as_json(),
        "global_history_members": history,
    }


def run(full: bool, sizes: list[int] | None = None, ttl: int | None = None) -> dict[str, Any]:
    """6,000 runs kept 5 s (100,000 kept 60 s with ``full``), or ``sizes[0]``."""
    runs = sizes[0] if sizes else (FULL_RUNS if full else QUICK_RUNS)
    ttl = ttl or (TTL if full else QUICK_TTL)
    data = {"commit": commit(), "mode": "full" if full else "quick", **measure(runs, ttl)}
    write_result("bounded_storage", data)
    return data


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=FULL_RUNS)
    parser.add_argument("--ttl", type=int, default=TTL)
    args = parser.parse_args()
    run(True, [args.runs], args.ttl)
