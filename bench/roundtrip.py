"""Benchmark 4, interactive round trip: the API against raw Celery, with 1, 8 and 32 clients.

Forwarder: ``POST /tasks/forwarder.ping/runs`` then ``GET /runs/{id}`` every 5 ms until
SUCCESS, through a real uvicorn running ``forwarder_api.main:create_app``. Anchor: raw Celery
``app.send_task("forwarder.ping").get()`` (the Redis result backend notifies by pub/sub).
Both use the same Valkey and the same Forwarder worker (prefork, concurrency 2). Each client
is a thread issuing requests back to back for a fixed time; latency is per request,
throughput is the requests completed within the measured time per second, over all clients.
Each path's time is taken in slices of about 4 s, the three paths in turn with the order
rotating every round, so that a change of load on a shared machine lands on the anchor and on
Forwarder alike.

An extra row per client count, beside what the issue specifies: the same round trip with
the API's long poll, ``GET /runs/{id}?wait=30`` (answered when the run ends), which is what
``.get()`` does for raw Celery. The API process's CPU time per HTTP request is recorded too:
on a shared machine it is steadier than the latencies.

Needs ``forwarder_api`` (the api branch on main); otherwise it is reported as not measured.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from forwarder_worker.app import create_app
from forwarder_worker.settings import Settings
from harness import (
    BIN,
    bench_env,
    cpu_seconds,
    eventually,
    redis_for,
    run_concurrently,
    show,
    start,
    start_worker,
    summarize,
    table,
    work_dir,
    write_result,
)

TOKEN = "bench-token-not-a-secret"  # noqa: S105  (a throwaway token for a local uvicorn)
CLIENTS = (1, 8, 32)
POLL = 0.005
LONG_POLL = 30
PATHS = ("raw celery", "api", "api long-poll")
SLICE = 4.0
"""Seconds of one path's turn: each path's time is taken in slices of about this length,
the three paths in turn (see run())."""


def _api_available() -> str | None:
    try:
        import forwarder_api.main  # noqa: F401
    except ImportError as exc:
        return f"needs the api (forwarder_api) on main: {exc}"
    return None


def _drive(one_request: Any, clients: int, seconds: float) -> tuple[list[float], int, int]:
    """``clients`` threads calling ``one_request()`` back to back for ``seconds``.

    Returns every request's latency, the failures, and how many requests completed within
    the ``seconds`` (throughput counts those over ``seconds``, so the requests still in flight
    at the end, which take the slowest path longest, do not stretch its time)."""
    latencies: list[float] = []
    failures = [0]
    in_time = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> dict[str, Any]:
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            try:
                one_request()
            except Exception:
                with lock:
                    failures[0] += 1
                continue
            took = time.perf_counter() - began
            with lock:
                latencies.append(took)
                in_time[0] += time.monotonic() <= stop_at
        return {}

    run_concurrently([client for _ in range(clients)])
    return latencies, failures[0], in_time[0]


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
        api = start(
            [
                str(BIN / "uvicorn"),
                "--factory",
                "forwarder_api.main:create_app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            bench_env(url, FORWARDER_API_TOKENS=TOKEN),
            logs / "api.log",
            "api",
        )
        base = f"http://127.0.0.1:{port}"
        app = create_app(Settings(redis_url=url))
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
            local = threading.local()
            headers = {"Authorization": f"Bearer {TOKEN}"}

            # Where an API round trip goes: the POST, and each GET of the run.
            parts: dict[str, list[float]] = {"post": [], "get": [], "gets_per_run": []}

            def submit(timeout: float) -> str:
                """POST a ping through the API (one client per thread); the run's id."""
                if not hasattr(local, "http"):
                    local.http = httpx.Client(base_url=base, headers=headers, timeout=timeout)
                began = time.perf_counter()
                reply = local.http.post("/tasks/forwarder.ping/runs", json={})
                parts["post"].append(time.perf_counter() - began)
                reply.raise_for_status()
                return str(reply.json()["id"])

            def poll(run_id: str, params: dict[str, Any], sleep: float, limit: float) -> None:
                """GET the run until it ends; each GET's time and the GETs per run."""
                deadline = time.monotonic() + limit
                gets = 0
                while time.monotonic() < deadline:
                    began = time.perf_counter()
                    state = local.http.get(f"/runs/{run_id}", params=params).json()["state"]
                    parts["get"].append(time.perf_counter() - began)
                    gets += 1
                    if state in ("SUCCESS", "FAILURE", "REVOKED"):
                        parts["gets_per_run"].append(gets)
                    if state == "SUCCESS":
                        return
                    if state in ("FAILURE", "REVOKED"):
                        raise RuntimeError(f"run {run_id} ended {state}")
                    time.sleep(sleep)
                raise TimeoutError(run_id)

            def via_api() -> None:
                poll(submit(30), {}, POLL, 30)

            def via_api_long_poll() -> None:
                poll(submit(60), {"wait": LONG_POLL}, 0.0, 60)

            def via_celery() -> None:
                app.send_task("forwarder.ping").get(timeout=30)

            # Warm both paths (connections, imports) before measuring.
            _drive(via_api, 2, 1.0)
            _drive(via_api_long_poll, 2, 1.0)
            _drive(via_celery, 2, 1.0)
            calls = dict(zip(PATHS, (via_celery, via_api, via_api_long_poll), strict=True))
            for clients in CLIENTS:
                # Rounds: each path in turn for a slice, the order rotating every round, so a
                # change of machine load lands on all three alike (not on whichever ran last).
                runs: dict[str, dict[str, Any]] = {
                    path: {"latencies": [], "failures": 0, "in_time": 0, "seconds": 0.0}
                    | {"api_cpu": 0.0, "client_cpu": 0.0}
                    | {part: [] for part in parts}
                    for path in calls
                }
                for round_no in range(rounds):
                    turn = round_no % len(PATHS)
                    for path in PATHS[turn:] + PATHS[:turn]:
                        for values in parts.values():
                            values.clear()
                        api_cpu, client_cpu = cpu_seconds(api.pid), time.process_time()
                        latencies, failures, in_time = _drive(calls[path], clients, slice_s)
                        run = runs[path]
                        run["api_cpu"] += cpu_seconds(api.pid) - api_cpu
                        run["client_cpu"] += time.process_time() - client_cpu
                        run["latencies"] += latencies
                        run["failures"] += failures
                        run["seconds"] += slice_s
                        run["in_time"] += in_time
                        for part, values in parts.items():
                            run[part] += values
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
