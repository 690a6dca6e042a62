"""Benchmark 7, the api's ``GET /metrics`` with N schedules: how long a scrape takes.

``python bench/metrics_scrape.py [--n N ...]`` (N = 1,000 and 10,000 by default), or
``python bench/run.py --only metrics_scrape [--full]`` (1,000; 10,000 too with ``--full``).
There is no anchor: redbeat serves no metrics.

An empty Valkey gets N entries through ``ScheduleStore.upsert`` (three in four every 60 s,
one in four a cron schedule, so the cached period matters; one in ten suspended) and, per
schedule, the run records the workers write: a run queued by beat, started and ended (one in
five failed), through ``RunLog``'s transition script, so the stats hash and the duration
histogram hold what a real scrape reads. The real api (``forwarder api`` under uvicorn) then
answers one scrape (its first: definitions parsed, cron periods computed) and
:data:`SCRAPES` more, timed from the client with the body read. Reported: p50 and p99 of
those, the first scrape, the response size and the number of series (sample lines).
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from forwarder_worker import Core, Settings
from forwarder_worker.local.cli import component_command
from forwarder_worker.schedules.store import Entry
from harness import (
    PREFIX,
    bench_env,
    commit,
    eventually,
    free_port,
    keep_other_sizes,
    redis_for,
    start,
    summarize,
    work_dir,
    write_result,
)

SIZES = (1000, 10_000)
SCRAPES = 30
CRONS = ("*/5 * * * *", "0 * * * *", "15 3 * * 1-5", "*/10 9-17 * * *")


def _entry(i: int) -> Entry:
    schedule: dict[str, Any] = {"cron": CRONS[i % len(CRONS)]} if i % 4 == 3 else {"every": 60}
    return Entry(
        name=f"bench-{i % 20}/entry-{i}",
        task="forwarder.http" if i % 2 else "forwarder.ping",
        schedule=schedule,
        suspend=i % 10 == 9,
    )


def _load(redis_url: str, n: int) -> None:
    core = Core.from_settings(Settings(redis_url=redis_url, key_prefix=PREFIX))
    try:
        now = time.time()
        entries = [_entry(i) for i in range(n)]
        for entry in entries:
            core.store.upsert(entry)
        runs = core.runs
        for start_at in range(0, n, 500):
            with core.client.pipeline(transaction=False) as pipe:
                for entry in entries[start_at : start_at + 500]:
                    run_id = str(uuid.uuid4())
                    slot = now - 60
                    runs.queued(
                        run_id, entry.task, source="schedule", schedule=entry.name, slot=slot,
                        client=pipe,
                    )  # fmt: skip
                    runs.transition(run_id, "STARTED", started=slot + 0.5, client=pipe)
                    i = int(entry.name.rpartition("-")[2])
                    state = "FAILURE" if i % 5 == 4 else "SUCCESS"
                    runs.transition(run_id, state, finished=slot + 1.7, client=pipe)
                pipe.execute()
    finally:
        core.close()


def one(n: int) -> dict[str, Any]:
    with redis_for(f"metrics-{n}") as url:
        began = time.monotonic()
        _load(url, n)
        loaded = time.monotonic() - began
        port = free_port()
        folder = work_dir("metrics_scrape")
        schedules = folder / f"schedules-{n}"
        schedules.mkdir(exist_ok=True)
        env = _env(url, schedules)
        api = start(
            component_command("api", ["--host", "127.0.0.1", "--port", str(port)]),
            env,
            folder / f"api-{n}.log",
            "api",
        )
        try:
            base = f"http://127.0.0.1:{port}"
            eventually(lambda: _healthy(base), 60, 0.2, "api up")
            with httpx.Client(base_url=base, timeout=60) as client:
                first, body = _scrape(client)
                times = []
                for _ in range(SCRAPES):
                    took, body = _scrape(client)
                    times.append(took)
        finally:
            api.stop()
    series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
    ours = sum(
        1 for line in body.splitlines() if line.startswith("forwarder_schedule_") and "{" in line
    )
    result = {
        "n": n,
        "load_seconds": round(loaded, 1),
        "first_scrape_seconds": first,
        "scrape_seconds": summarize(times),
        "response_bytes": len(body.encode()),
        "series": series,
        "per_schedule_series": ours,
    }
    print(
        f"N={n}: scrape p50 {result['scrape_seconds']['p50'] * 1000:.0f} ms, "
        f"p99 {result['scrape_seconds']['p99'] * 1000:.0f} ms, first {first * 1000:.0f} ms, "
        f"{len(body.encode()) / 1e6:.1f} MB, {series} series",
        flush=True,
    )
    return result


def _env(redis_url: str, schedules: Path) -> dict[str, str]:
    return bench_env(
        redis_url,
        FORWARDER_API_TOKENS="bench-token-0123456789",
        FORWARDER_SCHEDULES_MODE="local",
        FORWARDER_SCHEDULES_DIR=str(schedules),
    )


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _scrape(client: httpx.Client) -> tuple[float, str]:
    began = time.perf_counter()
    response = client.get("/metrics")
    text = response.text
    took = time.perf_counter() - began
    response.raise_for_status()
    return took, text


def run(full: bool, sizes: list[int] | None = None) -> dict[str, Any]:
    """N = 1,000 (and 10,000 with ``full``), or ``sizes``; sizes not measured keep their
    previous figures in the result file."""
    chosen = sizes or (list(SIZES) if full else [SIZES[0]])
    data: dict[str, Any] = {
        "commit": commit(),
        "scrapes": SCRAPES,
        "results": [one(n) for n in chosen],
    }
    keep_other_sizes("metrics_scrape", data, ["results"], chosen)
    write_result("metrics_scrape", data)
    return data


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="*", default=list(SIZES))
    run(True, parser.parse_args().n)
