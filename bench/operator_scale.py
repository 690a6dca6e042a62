"""Benchmark 5, operator scale: N ScheduledTask resources on the emulator.

N resources (``bench.noop``, every 60 s) are created on the kube emulator (a server process)
before the operator starts; then the real operator (``python -m forwarder_operator``, default
settings: status loop every 1 s) starts against a fresh Valkey. Measured: time from operator
start to every entry stored (the store's index), and to every resource's status Ready=True
(listing polled every second); the operator's RSS at steady state; and the cost of one
status-sync cycle: the operator's CPU time over 20 s of steady state, with a beat and a worker
firing the N schedules (each once a minute, so about N/60 status updates a second), divided by
the number of status-loop passes in that time.

There is no anchor: redbeat has no operator. The targets are absolute.

Also here: the arming latency "from resource create on the emulator, with the operator
running, to the first publish" (``arming_from_create``), which benchmark 3 reports.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import httpx
import redis
from entries import index_of
from harness import (
    BIN,
    PREFIX,
    REPO,
    Proc,
    QueueProbe,
    Stack,
    bench_env,
    cpu_seconds,
    keep_other_sizes,
    redis_for,
    rss_bytes,
    start,
    start_beat,
    start_worker,
    summarize,
    work_dir,
    write_result,
)

API = "/apis/forwarder.dev/v1alpha1"
STATUS_INTERVAL = 1.0  # the operator's default status loop period
TARGET = (
    "10,000 Ready within 60 s; at most 150 MiB RSS at 1,000 and at most 50 KiB more per resource"
)


def missing() -> str | None:
    """Why the operator benchmarks cannot run here, or None."""
    try:
        import forwarder_operator.handlers  # noqa: F401
    except ImportError as exc:
        return f"needs the operator (forwarder_operator.handlers) on main: {exc}"
    if not (REPO / "tests" / "support" / "kube_emulator.py").exists():
        return "needs tests/support/kube_emulator.py (the operator branch) on main"
    return None


def _body(name: str, i: int, every: str) -> dict[str, Any]:
    return {
        "apiVersion": "forwarder.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": name},
        "spec": {"task": "bench.noop", "args": [i], "schedule": {"every": every}},
    }


def _create(http: httpx.Client, name: str, i: int, every: str) -> None:
    reply = http.post(f"{API}/namespaces/default/scheduledtasks", json=_body(name, i, every))
    if reply.status_code != 201:
        raise RuntimeError(f"create {name}: {reply.status_code} {reply.text[:300]}")


class ReadyWatch:
    """Counts resources whose Ready condition is True, from one watch stream (as ``kubectl
    wait`` does), in a thread.

    Listing all N resources every few seconds would itself load the emulator with N objects
    per poll (10 MB at N = 10,000) and slow what is measured; a watch costs one event per
    change, which the operator's own writes cause anyway.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.ready: set[str] = set()
        self.first_all: float | None = None
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReadyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def count(self) -> int:
        return len(self.ready)

    def _run(self) -> None:
        version = "0"
        while not self._stop.is_set():
            params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "60"}
            try:
                with httpx.stream(
                    "GET",
                    f"{self.url}{API}/namespaces/default/scheduledtasks",
                    params=params,
                    timeout=httpx.Timeout(10, read=120),
                ) as reply:
                    for line in reply.iter_lines():
                        if self._stop.is_set():
                            return
                        if line:
                            version = self._apply(json.loads(line)) or version
            except httpx.HTTPError:
                self.errors += 1
                time.sleep(0.5)

    def _apply(self, event: dict[str, Any]) -> str | None:
        obj = event.get("object") or {}
        metadata = obj.get("metadata") or {}
        name = metadata.get("name")
        if not name or event.get("type") == "BOOKMARK":
            return None
        conditions = (obj.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        if ready and event.get("type") != "DELETED":
            self.ready.add(name)
        else:
            self.ready.discard(name)
        return str(metadata.get("resourceVersion") or "") or None


def _operator(env: dict[str, str], log: Any) -> Proc:
    return start([str(BIN / "python"), "-m", "forwarder_operator"], env, log, "operator")


def scale(n: int, cap: float) -> dict[str, Any]:
    from support.kube_emulator import served_emulator

    logs = work_dir(f"operator-{n}")
    with redis_for("operator") as url, served_emulator(logs / "kube") as cluster:
        http = httpx.Client(base_url=cluster.url, timeout=120)
        client = redis.Redis.from_url(url, decode_responses=True)
        for i in range(n):
            _create(http, f"st-{i}", i, "60s")
        env = bench_env(url, KUBECONFIG=str(cluster.kubeconfig))
        emulator_cpu0 = cpu_seconds(cluster.process.pid)
        began = time.time()
        operator = _operator(env, logs / "operator.log")
        watch = ReadyWatch(cluster.url).__enter__()
        try:
            curve: list[tuple[float, int, int]] = []
            stored_at = ready_at = None
            stored = ready = 0
            while time.time() - began < cap and operator.alive():
                stored = int(client.scard(f"{PREFIX}:entries"))
                if stored >= n and stored_at is None:
                    stored_at = time.time()
                ready = watch.count()
                curve.append((round(time.time() - began, 2), stored, ready))
                if ready >= n:
                    ready_at = time.time()
                    break
                time.sleep(0.5)
            watch.__exit__()
            list_timeouts = watch.errors
            emulator_cpu = cpu_seconds(cluster.process.pid) - emulator_cpu0
            phase = time.time() - began
            if not operator.alive():
                raise RuntimeError(f"operator exited:\n{operator.output()[-3000:]}")
            time.sleep(5)
            rss_idle = rss_bytes(operator.pid)
            # Steady state with firings: every schedule fires once a minute.
            worker = start_worker(url, logs / "worker.log")
            beat = start_beat(Stack("forwarder", "forwarder"), url, logs / "beat.log")
            try:
                time.sleep(10)
                window = 20.0
                cpu0 = cpu_seconds(operator.pid)
                time.sleep(window)
                cpu = cpu_seconds(operator.pid) - cpu0
                rss_busy = rss_bytes(operator.pid)
            finally:
                beat.stop()
                worker.stop()
        finally:
            watch.__exit__()
            operator.stop()
            http.close()
            client.close()
    passes = window / STATUS_INTERVAL
    return {
        "n": n,
        "cap_seconds": cap,
        "seconds_to_all_stored": None if stored_at is None else stored_at - began,
        "seconds_to_all_ready": None if ready_at is None else ready_at - began,
        "stored_at_end": stored,
        "ready_watch_errors": list_timeouts,
        "ready_at_end": ready,
        "emulator_cpu_share_until_ready": emulator_cpu / phase,
        "curve_seconds_stored_ready": curve,
        "rss_mib_steady_idle": rss_idle / 2**20,
        "rss_mib_steady_firing": rss_busy / 2**20,
        "operator_cpu_seconds_per_second_firing": cpu / window,
        "status_cycle_cpu_ms": cpu / passes * 1000,
        "firings_per_second": n / 60,
    }


def arming_from_create(trials: int) -> dict[str, Any]:
    """Latency from a ScheduledTask create on the emulator to its first publish."""
    from support.kube_emulator import served_emulator

    logs = work_dir("arming-create")
    rng = random.Random(11)
    with (
        redis_for("arming-create") as url,
        served_emulator(logs / "kube") as cluster,
        QueueProbe(url) as probe,
    ):
        http = httpx.Client(base_url=cluster.url, timeout=30)
        env = bench_env(url, KUBECONFIG=str(cluster.kubeconfig))
        operator = _operator(env, logs / "operator.log")
        beat = start_beat(Stack("forwarder", "forwarder"), url, logs / "beat.log")
        try:
            # The operator is up once it reconciles a first resource.
            _create(http, "warm-up", 10**6, "1h")
            if not probe.wait_for(1, timeout=120):
                raise RuntimeError(f"operator never armed:\n{operator.output()[-3000:]}")
            written: dict[int, float] = {}
            for i in range(trials):
                written[i] = time.time()
                _create(http, f"arm-{i}", i, "1h")
                time.sleep(rng.uniform(0.05, 0.35))
            probe.wait_for(trials + 1, timeout=60)
            # A new interval entry is anchored at the time of its store write (upsert's now),
            # which splits each latency into create -> store (operator) and store -> publish.
            reader = redis.Redis.from_url(url, decode_responses=True)
            stored_at = {}
            for i in written:
                meta = reader.hget(f"{PREFIX}default/arm-{i}", "meta")
                if meta:
                    stored_at[i] = float(json.loads(meta)["anchor"])
            reader.close()
        finally:
            beat.stop()
            operator.stop()
            http.close()
        landed = {index_of(m.args): m.at for m in probe.landed}
    latencies = [landed[i] - t for i, t in written.items() if i in landed]
    to_store = [stored_at[i] - t for i, t in written.items() if i in stored_at]
    to_publish = [landed[i] - stored_at[i] for i in written if i in landed and i in stored_at]
    return {
        "scheduler": "forwarder (resource create -> publish)",
        "trials": trials,
        "fired": len(latencies),
        "not_fired_within_wait": trials - len(latencies),
        "latency_s": summarize(latencies),
        "create_to_store_s": summarize(to_store),
        "store_to_publish_s": summarize(to_publish),
        "latency_samples": [round(x, 5) for x in latencies],
    }


def run(full: bool, sizes: list[int] | None = None) -> dict[str, Any]:
    why = missing()
    if why:
        print(f"\n== Operator scale: not measured ({why})")
        data = {"measured": False, "why": why, "target": TARGET}
        write_result("operator_scale", data)
        return data
    sizes = sizes or ([1000, 10000] if full else [1000])
    results = []
    for n in sizes:
        try:
            results.append(
                dict(scale(n, 900.0 if full else 150.0), mode="full" if full else "quick")
            )
        except Exception as exc:  # the emulator failing at this scale is itself a result
            results.append({"n": n, "error": f"{type(exc).__name__}: {exc}"})
    print("\n== Operator scale (no anchor: redbeat has no operator)")
    for r in results:
        if "error" in r:
            print(f"   N={r['n']}: failed: {r['error'][:300]}")
            continue

        def when(seconds: float | None, count: int, n: int = r["n"]) -> str:
            return f"{seconds:.1f}s" if seconds is not None else f"only {count}/{n} by the cap"

        print(
            f"   N={r['n']}: all stored {when(r['seconds_to_all_stored'], r['stored_at_end'])}, "
            f"all Ready {when(r['seconds_to_all_ready'], r['ready_at_end'])} (emulator busy "
            f"{r['emulator_cpu_share_until_ready']:.0%} of a core), "
            f"RSS {r['rss_mib_steady_idle']:.0f} MiB idle / "
            f"{r['rss_mib_steady_firing']:.0f} MiB firing, status cycle "
            f"{r['status_cycle_cpu_ms']:.1f} ms CPU at {r['firings_per_second']:.0f} firings/s"
        )
    data = {
        "measured": True,
        "mode": "full" if full else "quick",
        "drive": "kube emulator server process, real operator subprocess (default settings), "
        "resources created before the operator starts",
        "target": TARGET,
        "results": results,
    }
    keep_other_sizes("operator_scale", data, ("results",), sizes)
    write_result("operator_scale", data)
    return data
