"""Benchmark 2, firing precision: N interval schedules spread over a minute, each every 60 s.

Entry ``i`` is first due at ``T0 + i * 60 / N`` and then every 60 s. Each scheduler runs as a
real ``celery beat`` subprocess on its own Valkey; a probe pops the broker queue and stamps
every message (no worker). Lateness is publish time minus the due time the scheduler itself
set for that firing:

* Forwarder keeps a fixed grid, so the due time of firing k is ``T0 + i*60/N + 60k``.
* redbeat's interval entries are due 60 s after the previous run (``last_run_at`` is stamped
  just before the send), so firing k>0 is due about 60 s after firing k-1 landed. Its drift off
  the grid is reported too ("grid lateness"): it grows by each firing's lateness.

Beat CPU time is read from /proc over the measured minutes. Quick mode runs the three
schedulers at the same time (each on its own Valkey) for 2 minutes at N=1,000; FULL runs them
one after another for 3 minutes at N=1,000 and 10,000.
"""

from __future__ import annotations

import functools
import math
import time
from collections import defaultdict
from typing import Any

from burst import _load_rate
from entries import anchor_app, index_of, load_ours, load_redbeat
from forwarder_worker import Core, Settings
from harness import (
    PREFIX,
    QueueProbe,
    Stack,
    cpu_seconds,
    keep_other_sizes,
    redis_for,
    run_concurrently,
    show,
    start_beat,
    summarize,
    table,
    work_dir,
    write_result,
)

EVERY = 60
STACKS = (
    Stack("forwarder", "forwarder"),
    Stack("redbeat", "redbeat (default 300 s loop)"),
    Stack("redbeat", "redbeat (1 s loop)", max_interval=1.0),
)


def scenario(stack: Stack, n: int, minutes: int) -> dict[str, Any]:
    """Run one scheduler for ``minutes`` with N spread entries; lateness of every firing."""
    logs = work_dir("precision")
    tag = f"{stack.label.split()[0]}-{stack.max_interval}-{n}"
    with redis_for(tag) as url:
        per_entry = _load_rate(url, stack)
        t0 = float(math.ceil(time.time() + per_entry * n * 1.5 + 15))

        def due(i: int) -> float:
            return t0 + i * EVERY / n

        if stack.kind == "forwarder":
            load_ours(url, range(n), EVERY, due)
        else:
            load_redbeat(anchor_app(url), range(n), EVERY, due)
        with QueueProbe(url) as probe:
            beat = start_beat(stack, url, logs / f"beat-{tag}.log")
            try:
                ready_margin = t0 - time.time()
                time.sleep(max(0.0, t0 - time.time()))
                cpu0 = cpu_seconds(beat.pid)
                end = t0 + minutes * EVERY
                time.sleep(max(0.0, end - time.time()))
                cpu = cpu_seconds(beat.pid) - cpu0
                time.sleep(2.0)  # firings due just before the end still land
                metrics = None
                if stack.kind == "forwarder":
                    reader = Core.from_settings(Settings(redis_url=url, key_prefix=PREFIX))
                    metrics = reader.metrics.read()
                    reader.close()
            finally:
                beat.stop()
            landed = list(probe.landed)
    by_entry: dict[int, list[float]] = defaultdict(list)
    for message in landed:
        by_entry[index_of(message.args)].append(message.at)
    own, grid = [], []
    for i, times in by_entry.items():
        times.sort()
        for k, at in enumerate(times):
            slot = due(i) + k * EVERY
            if slot >= end:
                break
            grid.append(at - slot)
            if stack.kind == "forwarder" or k == 0:
                own.append(at - slot)
            else:
                own.append(at - (times[k - 1] + EVERY))
    expected = n * minutes
    return {
        "scheduler": stack.label,
        "n": n,
        "minutes": minutes,
        "expected_firings": expected,
        "firings": len(own),
        "missing": expected - len(own),
        "lateness_s": summarize(own),
        "grid_lateness_s": summarize(grid),
        "beat_cpu_seconds": cpu,
        "beat_cpu_ms_per_firing": cpu / max(1, len(own)) * 1000,
        "beat_ready_before_due_s": ready_margin,
        # Forwarder's own lateness metric (stamped as each message is handed to the publish
        # pipeline), to compare with the probe's mean.
        "scheduler_metrics_mean_lateness_s": (
            metrics["lateness_sum"] / metrics["lateness_count"]
            if metrics and metrics.get("lateness_count")
            else None
        ),
        "lateness_samples": [round(x, 5) for x in own],
    }


def run(full: bool, sizes: list[int] | None = None) -> dict[str, Any]:
    sizes = sizes or ([1000, 10000] if full else [1000])
    minutes = 3 if full else 2
    results: list[dict[str, Any]] = []
    all_rows: list[tuple[str, float, float, str]] = []
    for n in sizes:
        calls = [functools.partial(scenario, stack, n, minutes) for stack in STACKS]
        got = [call() for call in calls] if full else run_concurrently(calls)
        for r in got:
            r.update(mode="full" if full else "quick", minutes=minutes)
        results.extend(got)
        ours, default, fast = got
        rows = []
        for anchor in (default, fast):
            short = "rb300" if anchor is default else "rb1"
            for q in ("p50", "p99", "max"):
                rows.append(
                    (
                        f"N={n} {short}: lateness {q}",
                        anchor["lateness_s"][q] * 1000,
                        ours["lateness_s"][q] * 1000,
                        "ms",
                    )
                )
            rows.append(
                (
                    f"N={n} {short}: beat CPU ({minutes} min)",
                    anchor["beat_cpu_seconds"],
                    ours["beat_cpu_seconds"],
                    "s",
                )
            )
        all_rows.extend(rows)
        show(f"Firing precision, N={n}, {minutes} min (lower is better)", rows)
        for r in got:
            print(
                f"   {r['scheduler']:<30} firings {r['firings']}/{r['expected_firings']}, "
                f"grid lateness p99 {r['grid_lateness_s']['p99'] * 1000:.1f} ms"
            )
    data = {
        "mode": "full" if full else "quick",
        "drive": "real `celery beat` subprocesses; "
        + (
            "one scheduler at a time"
            if full
            else "the three schedulers at the same time, each on its own Valkey"
        ),
        "minutes": minutes,
        "target": "p99 lateness under 50 ms at N=10,000",
        "rows": table(all_rows),
        "results": results,
    }
    keep_other_sizes("precision", data, ("results",), sizes)
    write_result("precision", data)
    return data
