"""Benchmark 2, firing precision: N interval schedules spread over a minute, each every 60 s.

Entry ``i`` is first due at ``T0 + i * 60 / N`` and then every 60 s. Each scheduler runs as a
real ``celery beat`` subprocess on its own Valkey; a probe pops the broker queue and stamps
every message (no worker). Lateness is publish time minus the due time the scheduler itself
set for that firing:

* Forwarder keeps a fixed grid, so the due time of firing k is ``T0 + i*60/N + 60k``.
* redbeat's interval entries are due 60 s after the previous run (``last_run_at`` is stamped
  just before the send), so firing k>0 is due about 60 s after firing k-1 landed. Its drift off
  the grid is reported too ("grid lateness"): it grows by each firing's lateness.

Beat CPU time is read from /proc over the measured minutes; Redis memory per entry is the
server's used memory after the entries were written, less before, over N. Quick mode runs the
three schedulers at the same time (each on its own Valkey) for 2 minutes at N=1,000; FULL runs
them one after another for 3 minutes at N=1,000 and 10,000, and at N=100,000 (about 1,700
firings a second) Forwarder alone (its rows show no anchor): redbeat's capped burst pass at
that N (burst.py) shows how far behind it falls.
"""

from __future__ import annotations

import functools
import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis
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
# From this N on, only Forwarder is measured: redbeat cannot keep up there, which burst.py's
# capped pass at the same N shows in a minute (it falls behind at 10,000 already, above).
CAPPED_N = 100_000
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
        memory0 = _used_memory(url)
        # redbeat reads every entry as it starts (seconds at 10,000, a minute at 100,000).
        startup = n / 2000 if stack.kind == "redbeat" else 0.0
        t0 = float(math.ceil(time.time() + per_entry * n * 1.5 + 8 + startup))

        def due(i: int) -> float:
            return t0 + i * EVERY / n

        if stack.kind == "forwarder":
            load_ours(url, range(n), EVERY, due)
        else:
            load_redbeat(anchor_app(url), range(n), EVERY, due)
        memory_per_entry = (_used_memory(url) - memory0) / n
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
        "redis_memory_per_entry_bytes": memory_per_entry,
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


def _lateness_ms(result: dict[str, Any], q: str) -> float:
    return float(result["lateness_s"][q]) * 1000


def _used_memory(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def run(full: bool, sizes: list[int] | None = None) -> dict[str, Any]:
    sizes = sizes or ([1000, 10000, CAPPED_N] if full else [1000])
    minutes = 3 if full else 2
    results: list[dict[str, Any]] = []
    all_rows: list[tuple[str, float, float, str]] = []
    for n in sizes:
        if n >= CAPPED_N:
            got = [scenario(STACKS[0], n, minutes)]
        else:
            calls = [functools.partial(scenario, stack, n, minutes) for stack in STACKS]
            got = [call() for call in calls] if full else run_concurrently(calls)
        for r in got:
            r.update(mode="full" if full else "quick")
        results.extend(got)
        ours, *anchors = got
        rows = []
        figures: list[tuple[str, Callable[[dict[str, Any]], float], str]] = [
            *(
                (f"lateness {q}", functools.partial(_lateness_ms, q=q), "ms")
                for q in ("p50", "p99", "max")
            ),
            ("beat CPU per firing", lambda r: r["beat_cpu_ms_per_firing"], "ms"),
            ("share of firings made", lambda r: r["firings"] / r["expected_firings"] * 100, "%"),
            ("Redis memory per entry", lambda r: r["redis_memory_per_entry_bytes"], "B"),
        ]
        for anchor in anchors or [None]:
            if anchor is None:
                short = "no anchor"
            else:
                short = "rb1" if anchor["scheduler"] == STACKS[2].label else "rb300"
            for what, value, unit in figures:
                rows.append(
                    (
                        f"N={n} {short}: {what}",
                        math.nan if anchor is None else value(anchor),
                        value(ours),
                        unit,
                    )
                )
        all_rows.extend(rows)
        show(f"Firing precision, N={n}, {minutes} min (lower is better)", rows)
        for r in got:
            print(
                f"   {r['scheduler']:<30} {r['minutes']} min: firings "
                f"{r['firings']}/{r['expected_firings']}, "
                f"grid lateness p99 {r['grid_lateness_s']['p99'] * 1000:.1f} ms, "
                f"beat CPU {r['beat_cpu_ms_per_firing']:.3f} ms/firing, "
                f"Redis {r['redis_memory_per_entry_bytes']:.0f} B/entry"
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
        "target": "p99 lateness under 50 ms at N=10,000; every firing made and p99 under "
        "100 ms at N=100,000",
        "rows": table(all_rows),
        "results": results,
    }
    keep_other_sizes("precision", data, ("results",), sizes)
    write_result("precision", data)
    return data
