"""Benchmark 5, operator scale: N ScheduledTask resources on a real kube-apiserver and etcd.

The control plane is the tests' own (``tests/support/controlplane.py``: kube-apiserver and etcd
built from the pinned Go module, run as envtest runs them, RBAC on). N resources
(``bench.noop``, every 60 s; every 20 s in quick mode) are created in one namespace before
the operator starts; then the real operator (``python -m forwarder_operator``, default
settings: status loop every 1 s) starts against a fresh Valkey, as its own ServiceAccount
bound by ``manifests/rbac`` (a TokenRequest token, as in a cluster), never as admin.
Measured: time from operator start to every entry stored (the store's index), and to every
resource's status Ready=True (counted from one watch stream); the CPU that kube-apiserver and
etcd spend meanwhile and their RSS, beside the operator's; the operator's RSS at steady
state; and the cost of one status-sync cycle: the operator's CPU time over one interval of
the schedules in steady state (60 s; 20 s in quick mode), starting 10 s (5 s) after a beat
and a worker start firing them, divided by the number of status-loop passes in that time.
One whole interval, so every schedule fires once in it whatever the phase of their due
times (a new interval schedule fires at once, so at N = 1,000, all stored within seconds,
the firings come in one burst a minute, which a shorter window can miss).

There is no anchor: redbeat has no operator. The targets are absolute. Figures before
December 2026 were measured on a Python emulator of the Kubernetes API (kmock), which did far
less work per request; bench/REPORT.md keeps them, marked as the emulator's.

Also here: the arming latency "from resource create on the apiserver, with the operator
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
from support.controlplane import ControlPlane, ControlPlaneError, build, running
from support.scheduled_tasks import apply_finalizer_policy

API = "/apis/forwarder.dev/v1alpha1"
NAMESPACE = "bench"
TASKS = f"{API}/namespaces/{NAMESPACE}/scheduledtasks"
# Where manifests/rbac puts the operator's ServiceAccount.
OPERATOR_NAMESPACE, OPERATOR_ACCOUNT = "forwarder", "forwarder-operator"
STATUS_INTERVAL = 1.0  # the operator's default status loop period
TARGET = "10,000 Ready within 30 s, operator RSS at most 200 MiB at 10,000 (issue 22)"
# Seconds to settle after the beat and the worker start, before the steady window (one
# interval of the schedules) is measured: FULL, and quick mode.
FULL_SETTLE = 10.0
QUICK_SETTLE = 5.0
# The schedules' interval: once a minute, every 20 s in quick mode (its 10-minute budget).
FULL_EVERY = 60.0
QUICK_EVERY = 20.0


def missing() -> str | None:
    """Why the operator benchmarks cannot run here, or None."""
    try:
        import forwarder_operator.handlers  # noqa: F401
    except ImportError as exc:
        return f"needs the operator (forwarder_operator.handlers) on main: {exc}"
    try:
        build()
    except ControlPlaneError as exc:
        return f"needs the test control plane (make controlplane): {exc}"
    return None


def _body(name: str, i: int, every: str) -> dict[str, Any]:
    return {
        "apiVersion": "forwarder.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": name},
        "spec": {"task": "bench.noop", "args": [i], "schedule": {"every": every}},
    }


def _create(http: httpx.Client, name: str, i: int, every: str) -> None:
    reply = http.post(TASKS, json=_body(name, i, every))
    if reply.status_code != 201:
        raise RuntimeError(f"create {name}: {reply.status_code} {reply.text[:300]}")


def _prepare(plane: ControlPlane, *, policy: bool = True) -> dict[str, str]:
    """CRDs, the bench namespace, the operator's RBAC and (``policy``) the finalizer's
    admission policy, as the chart installs them on Kubernetes 1.36+; the operator's
    KUBECONFIG."""
    plane.kubectl("apply", "-f", str(REPO / "manifests" / "crds"))
    plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    for namespace in (NAMESPACE, OPERATOR_NAMESPACE):
        plane.create_namespace(namespace)
    plane.kubectl("apply", "-k", str(REPO / "manifests" / "rbac"))
    if policy:
        apply_finalizer_policy(plane, NAMESPACE)
    kubeconfig = plane.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)
    return {"KUBECONFIG": str(kubeconfig)}


class ReadyWatch:
    """Counts resources whose Ready condition is True, from one watch stream (as ``kubectl
    wait`` does), in a thread.

    Listing all N resources every few seconds would itself load the apiserver with N objects
    per poll (10 MB at N = 10,000) and slow what is measured; a watch costs one event per
    change, which the operator's own writes cause anyway.
    """

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
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
        http = self.plane.http()
        http.timeout = httpx.Timeout(10, read=120)
        while not self._stop.is_set():
            params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "60"}
            try:
                with http.stream("GET", TASKS, params=params) as reply:
                    for line in reply.iter_lines():
                        if self._stop.is_set():
                            return
                        if line:
                            version = self._apply(json.loads(line)) or version
            except httpx.HTTPError:
                self.errors += 1
                time.sleep(0.5)
        http.close()

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


def scale(
    n: int,
    cap: float,
    settle: float = FULL_SETTLE,
    every: float = FULL_EVERY,
    *,
    policy: bool = True,
) -> dict[str, Any]:
    logs = work_dir(f"operator-{n}")
    with redis_for("operator") as url, running(logs / "controlplane") as plane:
        kube_env = _prepare(plane, policy=policy)
        http = plane.http()
        client = redis.Redis.from_url(url, decode_responses=True)
        created = time.time()
        for i in range(n):
            _create(http, f"st-{i}", i, f"{every:g}s")
        create_seconds = time.time() - created
        env = bench_env(url, **kube_env)
        servers = {"apiserver": plane.apiserver.popen.pid, "etcd": plane.etcd.popen.pid}
        served0 = plane.requests_served()
        server_cpu0 = {name: cpu_seconds(pid) for name, pid in servers.items()}
        began = time.time()
        operator = _operator(env, logs / "operator.log")
        watch = ReadyWatch(plane).__enter__()
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
            served = plane.requests_served()
            served.subtract(served0)
            server_cpu = {
                name: cpu_seconds(pid) - server_cpu0[name] for name, pid in servers.items()
            }
            phase = time.time() - began
            if not operator.alive():
                raise RuntimeError(f"operator exited:\n{operator.output()[-3000:]}")
            operator_cpu = cpu_seconds(operator.pid)
            forbidden = operator.output().count("Forbidden")
            time.sleep(5)
            rss_idle = rss_bytes(operator.pid)
            server_rss = {name: rss_bytes(pid) / 2**20 for name, pid in servers.items()}
            # Steady state with firings, over one whole interval: each schedule fires once.
            worker = start_worker(url, logs / "worker.log")
            beat = start_beat(Stack("forwarder", "forwarder"), url, logs / "beat.log")
            try:
                window = every
                time.sleep(settle)
                cpu0 = cpu_seconds(operator.pid)
                steady0 = {name: cpu_seconds(pid) for name, pid in servers.items()}
                time.sleep(window)
                cpu = cpu_seconds(operator.pid) - cpu0
                steady = {name: cpu_seconds(pid) - steady0[name] for name, pid in servers.items()}
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
        "finalizer_policy": policy,
        "cap_seconds": cap,
        "seconds_to_create_all": create_seconds,
        "seconds_to_all_stored": None if stored_at is None else stored_at - began,
        "seconds_to_all_ready": None if ready_at is None else ready_at - began,
        "stored_at_end": stored,
        "ready_watch_errors": list_timeouts,
        "ready_at_end": ready,
        "forbidden_in_operator_log": forbidden,
        "operator_cpu_seconds_until_ready": operator_cpu,
        "requests_until_ready": {k: v for k, v in sorted(served.items()) if v},
        "requests_per_resource_until_ready": sum(served.values()) / n,
        "apiserver_cpu_seconds_until_ready": server_cpu["apiserver"],
        "etcd_cpu_seconds_until_ready": server_cpu["etcd"],
        "apiserver_cpu_share_until_ready": server_cpu["apiserver"] / phase,
        "etcd_cpu_share_until_ready": server_cpu["etcd"] / phase,
        "apiserver_rss_mib_steady": server_rss["apiserver"],
        "etcd_rss_mib_steady": server_rss["etcd"],
        "apiserver_cpu_seconds_per_second_firing": steady["apiserver"] / window,
        "etcd_cpu_seconds_per_second_firing": steady["etcd"] / window,
        "curve_seconds_stored_ready": curve,
        "rss_mib_steady_idle": rss_idle / 2**20,
        "rss_mib_steady_firing": rss_busy / 2**20,
        "operator_cpu_seconds_per_second_firing": cpu / window,
        "status_cycle_cpu_ms": cpu / passes * 1000,
        "schedule_every_seconds": every,
        "firings_per_second": n / every,
        "steady_window_seconds": window,
    }


def arming_from_create(trials: int) -> dict[str, Any]:
    """Latency from a ScheduledTask create on the apiserver to its first publish."""
    logs = work_dir("arming-create")
    rng = random.Random(11)
    with (
        redis_for("arming-create") as url,
        running(logs / "controlplane") as plane,
        QueueProbe(url) as probe,
    ):
        env = bench_env(url, **_prepare(plane))
        http = plane.http()
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
                meta = reader.hget(f"{PREFIX}{NAMESPACE}/arm-{i}", "meta")
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
                dict(
                    scale(n, 900.0) if full else scale(n, 150.0, QUICK_SETTLE, QUICK_EVERY),
                    mode="full" if full else "quick",
                )
            )
        except Exception as exc:  # the control plane failing at this scale is itself a result
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
            f"all Ready {when(r['seconds_to_all_ready'], r['ready_at_end'])} (apiserver busy "
            f"{r['apiserver_cpu_share_until_ready']:.0%} and etcd "
            f"{r['etcd_cpu_share_until_ready']:.0%} of a core, operator "
            f"{r['operator_cpu_seconds_until_ready']:.1f} CPU-s, "
            f"{r['requests_per_resource_until_ready']:.2f} requests per resource; RSS "
            f"{r['apiserver_rss_mib_steady']:.0f} / {r['etcd_rss_mib_steady']:.0f} MiB), "
            f"operator RSS {r['rss_mib_steady_idle']:.0f} MiB idle / "
            f"{r['rss_mib_steady_firing']:.0f} MiB firing, status cycle "
            f"{r['status_cycle_cpu_ms']:.1f} ms CPU at {r['firings_per_second']:.0f} firings/s"
        )
    data = {
        "measured": True,
        "mode": "full" if full else "quick",
        "drive": "real kube-apiserver and etcd (tests/controlplane, RBAC on), real operator "
        "subprocess as its ServiceAccount (default settings), resources created before the "
        "operator starts",
        "target": TARGET,
        "results": results,
    }
    keep_other_sizes("operator_scale", data, ("results",), sizes)
    write_result("operator_scale", data)
    return data
