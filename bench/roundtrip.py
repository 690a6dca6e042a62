"""Benchmark 4, interactive round trip: the API against raw Celery, with 1, 8 and 32 clients.

Forwarder: ``POST /tasks/forwarder.ping/runs``, then ``GET /runs/{id}?wait=30`` until SUCCESS
(the API's long poll, its documented way to wait for a run: answered when the run ends, as
``.get()`` is), through the server as ``forwarder api`` (the chart's command) runs it:
uvicorn with ``forwarder_api.main:create_app`` and the api's own HTTP protocol
(``forwarder_api.http_guard``), at the chart's log level. Anchor: raw
Celery ``app.send_task("forwarder.ping").get()`` (the Redis result backend notifies by
pub/sub). Both use the same Valkey and the same Forwarder worker (prefork, concurrency 2).
A third row per client count is a client that cannot long-poll: it GETs ``/runs/{id}`` every
5 ms instead.

Each client is a process of its own (``bench/rt_client.py``, which says why) issuing round
trips back to back for a fixed time; latency is per round trip, throughput is the round
trips completed within the measured time per second, over all clients. Each path's time is
taken in slices of about 4 s, the three paths in turn with the order rotating every round, so
that a change of load on a shared machine lands on the anchor and on Forwarder alike. The
API process's CPU time per HTTP request, and the clients' own CPU per round trip, are
recorded too: on a shared machine they are steadier than the latencies.

Needs ``forwarder_api`` (the api branch on main); otherwise it is reported as not measured.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from forwarder_worker.local.cli import component_command
from harness import (
    BENCH,
    bench_env,
    cpu_seconds,
    eventually,
    redis_for,
    show,
    start,
    start_worker,
    summarize,
    table,
    work_dir,
    write_result,
)
from rt_client import LONG_POLL, POLL

TOKEN = "bench-token-not-a-secret"  # noqa: S105  (a throwaway token for a local uvicorn)
CLIENTS = (1, 8, 32)
PATHS = ("raw celery", "api", "api long-poll")
PARTS = ("post", "get", "gets_per_run")
LOG_LEVEL = "info"
"""The api's log level: the chart's default (``config.logLevel``), at which uvicorn writes an
access-log line per request."""
SLICE = 4.0
"""Seconds of one path's turn: each path's time is taken in slices of about this length,
the three paths in turn (see run())."""


def _api_available() -> str | None:
    try:
        import forwarder_api.main  # noqa: F401
    except ImportError as exc:
        return f"needs the api (forwarder_api) on main: {exc}"
    return None


class Clients:
    """Client processes (``bench/rt_client.py``), started once and reused by every slice.

    Each is its own interpreter, as each client is its own program in a cluster; the
    module's docstring says why they are not threads of this process."""

    def __init__(self, count: int, redis_url: str, base_url: str, log: Path) -> None:
        env = bench_env(redis_url, RT_REDIS_URL=redis_url, RT_BASE_URL=base_url, RT_TOKEN=TOKEN)
        self.log = log
        self.procs: list[subprocess.Popen[str]] = []
        with log.open("a") as errors:
            for _ in range(count):
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, str(BENCH / "rt_client.py")],
                        env=env,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=errors,
                        text=True,
                    )
                )
        try:
            for proc in self.procs:
                self._answer(proc)  # {"ready": true} once warmed
        except BaseException:
            self.close()
            raise

    def _answer(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            tail = self.log.read_text()[-3000:]
            raise RuntimeError(f"a round-trip client exited ({proc.poll()}):\n{tail}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def drive(self, clients: int, path: str, seconds: float) -> dict[str, Any]:
        """The first ``clients`` processes run ``path`` together for ``seconds``; their
        results merged (lists joined, counts and CPU summed)."""
        start_at = time.time() + 0.2  # all begin at once, after the commands are out
        command = json.dumps({"path": path, "start_at": start_at, "seconds": seconds})
        chosen = self.procs[:clients]
        for proc in chosen:
            assert proc.stdin is not None
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        merged: dict[str, Any] = {}
        for proc in chosen:
            for key, value in self._answer(proc).items():
                merged[key] = merged.get(key, 0 if not isinstance(value, list) else []) + value
        return merged

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.close()  # EOF: the client returns
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run(full: bool, sizes: list[int] | None = None) -> dict[str, Any]:
    missing = _api_available()
    if missing:
        print(f"\n== Interactive round trip: not measured ({missing})")
        data = {"measured": False, "why": missing, "results": []}
        write_result("roundtrip", data)
        return data
    import httpx
    from support.processes import free_port

    seconds = 20.0 if full else 6.0
    rounds = max(1, round(seconds / SLICE))
    slice_s = seconds / rounds
    logs = work_dir("roundtrip")
    results: list[dict[str, Any]] = []
    with redis_for("roundtrip") as url:
        worker = start_worker(url, logs / "worker.log")
        port = free_port()
        # The server as `forwarder api` (the chart's command) runs it: uvicorn with the
        # api's own HTTP protocol (forwarder_api.http_guard).
        api = start(
            component_command(
                "api", ["--host", "127.0.0.1", "--port", str(port), "--log-level", LOG_LEVEL]
            ),
            bench_env(url, FORWARDER_API_TOKENS=TOKEN),
            logs / "api.log",
            "api",
        )
        base = f"http://127.0.0.1:{port}"
        try:

            def healthy() -> bool:
                try:
                    return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return not api.alive()

            eventually(
                healthy,
                timeout=60,
                interval=0.2,
                message="api up",
            )
            if not api.alive():
                raise RuntimeError(f"api exited:\n{api.output()[-3000:]}")
            clients_log = logs / "clients.log"
            started = time.monotonic()
            pool = Clients(max(CLIENTS), url, base, clients_log)
            print(f"   {max(CLIENTS)} client processes up in {time.monotonic() - started:.0f}s")
            try:
                for clients in CLIENTS:
                    # Rounds: each path in turn for a slice, the order rotating every round,
                    # so a change of machine load lands on all three alike.
                    runs: dict[str, dict[str, Any]] = {
                        path: {"latencies": [], "failures": 0, "in_time": 0, "seconds": 0.0}
                        | {"api_cpu": 0.0, "client_cpu": 0.0}
                        | {part: [] for part in PARTS}
                        for path in PATHS
                    }
                    for round_no in range(rounds):
                        turn = round_no % len(PATHS)
                        for path in PATHS[turn:] + PATHS[:turn]:
                            api_cpu = cpu_seconds(api.pid)
                            got = pool.drive(clients, path, slice_s)
                            run = runs[path]
                            run["api_cpu"] += cpu_seconds(api.pid) - api_cpu
                            run["client_cpu"] += got["cpu_s"]
                            run["seconds"] += slice_s
                            for key in ("latencies", "failures", "in_time", *PARTS):
                                run[key] += got[key]
                    for path, run in runs.items():
                        latencies = run["latencies"]
                        http_requests = len(run["post"]) + len(run["get"])
                        results.append(
                            {
                                "path": path,
                                "clients": clients,
                                "seconds": run["seconds"],
                                "rounds": rounds,
                                "requests": len(latencies),
                                "failures": run["failures"],
                                "throughput_per_s": run["in_time"] / run["seconds"],
                                "latency_s": summarize(latencies),
                                "latency_samples": [round(x, 5) for x in latencies],
                                # The bench's own CPU per round trip: its clients share the 2 cores
                                # with the API, the worker and Redis.
                                "client_cpu_ms_per_request": 1000
                                * run["client_cpu"]
                                / max(1, len(latencies)),
                                **(
                                    {
                                        "post_s": summarize(run["post"]),
                                        "get_s": summarize(run["get"]),
                                        "gets_per_run": summarize(run["gets_per_run"]),
                                        "api_cpu_ms_per_http_request": 1000
                                        * run["api_cpu"]
                                        / max(1, http_requests),
                                    }
                                    if path != "raw celery"
                                    else {}
                                ),
                            }
                        )
            finally:
                pool.close()
        finally:
            api.stop()
            worker.stop()
    rows = []
    for clients in CLIENTS:
        raw = next(r for r in results if r["clients"] == clients and r["path"] == "raw celery")
        for path, label in (("api", ""), ("api long-poll", "long-poll ")):
            ours = next(r for r in results if r["clients"] == clients and r["path"] == path)
            for q in ("p50", "p99"):
                rows.append(
                    (
                        f"{clients} clients: {label}latency {q}",
                        raw["latency_s"][q] * 1000,
                        ours["latency_s"][q] * 1000,
                        "ms",
                    )
                )
            rows.append(
                (
                    f"{clients} clients: {label}throughput",
                    raw["throughput_per_s"],
                    ours["throughput_per_s"],
                    "/s",
                )
            )
    show("Interactive round trip (anchor: raw Celery apply_async().get())", rows)
    for r in results:
        if r["path"] != "raw celery":
            print(
                f"   {r['path']} x{r['clients']}: POST p50 {r['post_s']['p50'] * 1000:.1f} ms, "
                f"GET /runs/{{id}} p50 {r['get_s']['p50'] * 1000:.1f} ms, "
                f"{r['gets_per_run']['mean']:.1f} GETs per run, "
                f"api CPU {r['api_cpu_ms_per_http_request']:.2f} ms per HTTP request, "
                f"client CPU {r['client_cpu_ms_per_request']:.2f} ms per run"
            )
        else:
            print(
                f"   raw celery x{r['clients']}: "
                f"client CPU {r['client_cpu_ms_per_request']:.2f} ms per run"
            )
    data = {
        "measured": True,
        "mode": "full" if full else "quick",
        "drive": f"client threads back to back for {seconds:.0f} s per configuration, in "
        f"{rounds} slices taking turns with the other paths (rotating order); throughput "
        "counts the requests completed within the slices; "
        f"api polled every {POLL * 1000:.0f} ms (long-poll rows: ?wait={LONG_POLL}); "
        "one Forwarder worker, prefork, concurrency 2",
        "target": "p50 overhead at most 2 ms over raw Celery; throughput at least 80% of raw",
        "results": results,
        "rows": table(rows),
    }
    write_result("roundtrip", data)
    return data
