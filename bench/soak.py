"""Chaos soak (``make soak``, not in CI): every component killed at random while invariants hold.

A real stack runs for 20 minutes by default: Valkey with AOF, the folder source reading 200
ScheduledTask files, two beats, two workers and the api, with two API clients submitting runs
and long-polling them. A chaos loop SIGKILLs one component (its whole process group, as a
lost pod) at random intervals and starts it again; Redis is killed once, in the middle. A
monitor reads every run record every 10 s and samples each process's RSS, and the invariants
of docs/reliability.md are checked on what it saw (``SoakChecker``):

* no slot dispatched twice: per schedule, at most one run record per slot;
* no acknowledged run lost: a record seen in a final state stays readable; an API run
  answered with 202 reaches a final state (those lost to the Redis kill's unsynced second
  are counted apart, ``appendfsync everysec`` being the reason);
* every schedule fires again within its deadline after each recovery: a record created
  within interval + beat lock timeout + slack after the restarted component was ready;
* each component's RSS stays level: first and last third compared, slope per hour;
* and, reported beside them, runs REVOKED though nothing revoked them (only Replace does):
  a run received and then never completed breaks at-least-once.

The result is ``bench/results/soak.json`` (summary and downsampled series) and
``bench/results/soak.txt``. Every process is started in its own process group and stopped at
the end, on Ctrl-C or failure too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
WORK = BENCH / ".work" / "soak"
sys.path.insert(0, str(REPO / "tests"))

from forwarder_worker import Core, Settings  # noqa: E402
from forwarder_worker.local.cli import component_command  # noqa: E402
from forwarder_worker.runs.records import RunRecord  # noqa: E402
from harness import machine_info, result_json  # noqa: E402
from support.api_process import api_env, client, start_api  # noqa: E402
from support.processes import (  # noqa: E402
    Proc,
    celery_beat,
    celery_worker,
    descendants,
    eventually,
    forwarder_env,
    free_port,
    start,
)
from support.valkey_process import ValkeyProcess  # noqa: E402

SCHEDULES = 200
NAMESPACE = "soak"
TASK = "tests.sleep"
LOCK_TIMEOUT = 10.0  # FORWARDER_BEAT_LOCK_TIMEOUT's default, kept
# A short hard limit, so a run held by a killed worker is redelivered within the soak:
# the broker's visibility timeout is 2 x limit + 60 s.
TASK_TIME_LIMIT = 30
APPENDFSYNC = "everysec"  # the chart's bundled Redis setting: a crash can lose ~1 s of writes
# Scheduling slack on top of each deadline: beat's loop, a loaded 2-core machine.
DEADLINE_SLACK = 3.0
MONITOR_EVERY = 10.0
KILLABLE = ("beat-0", "beat-1", "worker-0", "worker-1", "folder", "api")

SCHEDULE_YAML = """\
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata:
  name: {name}
  namespace: {namespace}
spec:
  task: {task}
  schedule:
    every: {every}s
  concurrencyPolicy: {policy}
  kwargs:
    seconds: {sleep}
"""


@dataclass(frozen=True)
class Schedule:
    """One of the soak's schedules, as written to its file."""

    name: str
    every: int
    policy: str
    sleep: float

    @property
    def key(self) -> str:
        return f"{NAMESPACE}/{self.name}"


def make_schedules(rng: random.Random) -> list[Schedule]:
    """200 schedules every 1 to 30 s, a quarter Forbid and a quarter Replace, sleeping up to
    0.2 s; the first four (Forbid, Replace and two Allow) run 4 s every 3 s, so Forbid skips,
    Replace revokes and Allow runs overlap all the time."""
    schedules = []
    for i in range(SCHEDULES):
        policy = ("Forbid", "Replace", "Allow", "Allow")[i % 4]
        every, sleep = rng.randint(1, 30), round(rng.uniform(0.0, 0.2), 3)
        if i < 4:
            every, sleep = 3, 4.0
        schedules.append(Schedule(f"s-{i:03d}", every, policy, sleep))
    return schedules


def write_schedules(folder: Path, schedules: list[Schedule]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in schedules:
        (folder / f"{s.name}.yaml").write_text(
            SCHEDULE_YAML.format(
                name=s.name,
                namespace=NAMESPACE,
                task=TASK,
                every=s.every,
                policy=s.policy,
                sleep=s.sleep,
            )
        )


# -- the stack -----------------------------------------------------------------------------


@dataclass
class Incarnation:
    """One start of a component: when it was killed and when its successor was ready."""

    component: str
    killed_at: float
    ready_at: float
    down_for: float


class Stack:
    """The soak's processes, each startable again after a kill, all stopped by ``close``."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.folder = work / "schedules"
        self.redis = ValkeyProcess(work / "redis", appendonly=True, appendfsync=APPENDFSYNC)
        self.env = forwarder_env(
            self.redis.url,
            FORWARDER_BEAT_LOCK_TIMEOUT=str(LOCK_TIMEOUT),
            FORWARDER_TASK_TIME_LIMIT=str(TASK_TIME_LIMIT),
            # Keep every record of the soak readable, for the checker.
            FORWARDER_RUN_HISTORY_LIMIT="100000",
            FORWARDER_GLOBAL_HISTORY_LIMIT="1000000",
        )
        self.api_port = free_port()
        self.procs: dict[str, Proc] = {}
        self.starts: dict[str, int] = defaultdict(int)

    def _log(self, name: str) -> Path:
        self.starts[name] += 1
        return self.logs / f"{name}.{self.starts[name]}.log"

    def start(self, name: str) -> None:
        """Start ``name`` and wait until it is ready."""
        log = self._log(name)
        # The line each component logs once it serves (the api's start waits for /healthz).
        marker = ""
        if name.startswith("beat"):
            proc, marker = celery_beat(self.env, log, name=name), "beat: Starting"
        elif name.startswith("worker"):
            proc, marker = celery_worker(self.env, log, concurrency=4, name=name), " ready."
        elif name == "folder":
            command = component_command("folder", ["--dir", str(self.folder)])
            proc, marker = start(command, self.env, log, name), "watching"
        elif name == "api":
            env = api_env(
                self.env,
                flower_port=free_port(),
                logs=self.logs,
                FORWARDER_SCHEDULES_DIR=str(self.folder),
            )
            proc = start_api(env, log, self.api_port, name=name)
        else:
            raise ValueError(f"no component named {name!r}")
        self.procs[name] = proc
        eventually(lambda: marker in proc.output() or not proc.alive(), 120, 0.1, message=name)
        if not proc.alive():
            raise RuntimeError(f"{name} exited at start:\n{proc.output()[-3000:]}")

    def kill_and_restart(self, name: str, down: float) -> Incarnation:
        """SIGKILL ``name`` (its whole group, or the Redis server), wait ``down`` seconds,
        start it again and wait until it is ready."""
        killed_at = time.time()
        if name == "redis":
            self.redis.kill()
            time.sleep(down)
            self.redis.start(timeout=120)
        else:
            self.procs[name].signal(signal.SIGKILL)
            self.procs[name].popen.wait(10)
            time.sleep(down)
            self.start(name)
        ready_at = time.time()
        return Incarnation(name, killed_at, ready_at, down)

    def pids(self) -> dict[str, int]:
        """The main process of each component now."""
        found = {name: proc.pid for name, proc in self.procs.items() if proc.alive()}
        if self.redis.popen is not None:
            found["redis"] = self.redis.popen.pid
        return found

    def close(self) -> None:
        """Stop every process of the soak (their groups), Redis last."""
        for proc in self.procs.values():
            proc.stop(timeout=10)
        self.redis.stop()


# -- the API clients -----------------------------------------------------------------------


@dataclass
class Submitted:
    """A run the api acknowledged with 202."""

    id: str
    at: float
    final: str | None = None


@dataclass
class ClientStats:
    submitted: list[Submitted] = field(default_factory=list)
    refused: int = 0  # POSTs not acknowledged (api or Redis down): nothing was promised
    poll_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def api_client_loop(port: int, stats: ClientStats, stop: threading.Event, seed: int) -> None:
    """Submit one short run about every second and long-poll it to its end, riding out the
    api's and Redis's kills (a refused POST is counted, not retried)."""
    rng = random.Random(seed)
    with client(port) as http:
        while not stop.is_set():
            try:
                reply = http.post(
                    f"/tasks/{TASK}/runs",
                    json={"kwargs": {"seconds": round(rng.uniform(0, 0.1), 3)}},
                )
            except httpx.HTTPError:
                reply = None
            if reply is None or reply.status_code != 202:
                with stats.lock:
                    stats.refused += 1
                stop.wait(1.0)
                continue
            run = Submitted(reply.json()["id"], time.time())
            with stats.lock:
                stats.submitted.append(run)
            deadline = time.time() + 60
            while not stop.is_set() and time.time() < deadline:
                try:
                    polled = http.get(f"/runs/{run.id}", params={"wait": 20})
                    state = polled.json().get("state") if polled.status_code == 200 else None
                except (httpx.HTTPError, ValueError):
                    state = None
                    with stats.lock:
                        stats.poll_errors += 1
                    stop.wait(0.5)
                if state in ("SUCCESS", "FAILURE", "REVOKED", "SKIPPED"):
                    run.final = state
                    break
            stop.wait(rng.uniform(0.5, 1.5))


# -- the monitor: run records and RSS ------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RecordSource:
    """The run records as the checker reads them, through the run log."""

    def __init__(self, core: Core) -> None:
        self.runs = core.runs
        self.client = core.client

    def since(self, since: float) -> list[RunRecord]:
        return self.runs.records(self.runs.ids_since(since))

    def reread(self, ids: list[str]) -> dict[str, RunRecord | None]:
        """``ids``' records now, None for each that no longer exists."""
        found: dict[str, RunRecord | None] = dict.fromkeys(ids)
        for record in self.runs.records(ids):
            found[record.id] = record
        return found

    def exist(self, ids: list[str]) -> list[bool]:
        """Whether each record still exists: one EXISTS each, pipelined (cheaper than
        reading tens of thousands of hashes every pass)."""
        with self.client.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.exists(self.runs.keys.run(run_id))
            return [bool(n) for n in pipe.execute()]


@dataclass
class SoakChecker:
    """What the monitor saw of the run records, and the invariants over it."""

    records: dict[str, RunRecord] = field(default_factory=dict)
    final_ids: set[str] = field(default_factory=set)
    # A record that was seen final and later missing: id -> (seen final record, missed at).
    lost_final: dict[str, tuple[RunRecord, float]] = field(default_factory=dict)
    lost_pending: dict[str, tuple[RunRecord, float]] = field(default_factory=dict)
    passes: int = 0
    failed_passes: int = 0
    last_pass: float = 0.0

    def observe(self, source: RecordSource, now: float) -> None:
        """One pass: read the records created since the last pass, re-read those not yet
        final, and check that each record seen final still exists."""
        for record in source.since(self.last_pass - 60):
            self.records[record.id] = record
            if record.final:
                self.final_ids.add(record.id)
        pending = [i for i, r in self.records.items() if not r.final]
        for run_id, current in source.reread(pending).items():
            if current is None:
                self.lost_pending.setdefault(run_id, (self.records[run_id], now))
            else:
                self.records[run_id] = current
                if current.final:
                    self.final_ids.add(run_id)
        final = sorted(self.final_ids)
        for run_id, exists in zip(final, source.exist(final), strict=True):
            if not exists:
                self.lost_final.setdefault(run_id, (self.records[run_id], now))
        self.last_pass = now
        self.passes += 1

    def duplicate_slots(self) -> list[dict[str, Any]]:
        """Every (schedule, slot) with more than one run record."""
        by_slot: dict[tuple[str, float], list[RunRecord]] = defaultdict(list)
        for record in self.records.values():
            if record.schedule and record.slot is not None:
                by_slot[(record.schedule, round(record.slot, 3))].append(record)
        return [
            {
                "schedule": schedule,
                "slot": slot,
                "records": [
                    {"id": r.id, "state": r.state, "created": r.created, "source": r.source}
                    for r in found
                ],
            }
            for (schedule, slot), found in sorted(by_slot.items())
            if len(found) > 1
        ]

    def created_by_schedule(self) -> dict[str, list[float]]:
        found: dict[str, list[float]] = defaultdict(list)
        for record in self.records.values():
            if record.schedule and record.created is not None:
                found[record.schedule].append(record.created)
        return {name: sorted(times) for name, times in found.items()}


def deadline_misses(
    events: list[Incarnation],
    schedules: list[Schedule],
    created: dict[str, list[float]],
    observed_until: float,
) -> tuple[int, list[dict[str, Any]], float]:
    """For each recovery and schedule: did the schedule fire (a record created) within
    interval + lock timeout + slack of the component being ready again? A recovery whose
    window holds the next kill is given that kill's window too (the kills come one at a
    time, but a window may outlast the pause before the next). Returns the checks made, the
    misses, and the largest fraction of a deadline used."""
    ordered = sorted(events, key=lambda e: e.killed_at)
    checks, misses, worst = 0, [], 0.0
    for s in schedules:
        times = created.get(s.key, [])
        window = s.every + LOCK_TIMEOUT + DEADLINE_SLACK
        ends = [e.ready_at + window for e in ordered]
        for i in range(len(ordered) - 2, -1, -1):
            if ordered[i + 1].killed_at < ends[i]:
                ends[i] = max(ends[i], ends[i + 1])
        for event, end in zip(ordered, ends, strict=True):
            if end > observed_until:
                continue
            checks += 1
            after = next((t for t in times if t > event.ready_at), None)
            if after is None or after > end:
                misses.append(
                    {
                        "schedule": s.key,
                        "every": s.every,
                        "component": event.component,
                        "killed_at": event.killed_at,
                        "ready_at": event.ready_at,
                        "deadline": end,
                        "next_firing": after,
                    }
                )
            else:
                worst = max(worst, (after - event.ready_at) / (end - event.ready_at))
    return checks, misses, worst


# -- the soak ------------------------------------------------------------------------------


def level(points: list[tuple[float, int, int, int]]) -> dict[str, float]:
    """First and last third of a series of process-tree RSS samples, and its slope."""
    third = max(1, len(points) // 3)
    first = statistics.mean(p[3] for p in points[:third]) / 1024
    last = statistics.mean(p[3] for p in points[-third:]) / 1024
    slope = 0.0
    if len(points) > 2:
        fit = statistics.linear_regression([p[0] for p in points], [p[3] / 1024 for p in points])
        slope = fit.slope * 3600
    return {
        "first_third_mib": round(first, 1),
        "last_third_mib": round(last, 1),
        "change_pct": round(100 * (last - first) / first, 1) if first else 0.0,
        "slope_mib_per_hour": round(slope, 1),
        "max_mib": round(max(p[3] for p in points) / 1024, 1),
    }


@dataclass
class RssSeries:
    # Per component: (time, main pid, main RSS KiB, process tree RSS KiB).
    samples: dict[str, list[tuple[float, int, int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def sample(self, pids: dict[str, int], now: float) -> None:
        """Each component's main process RSS and its whole tree's (a worker's pool)."""
        for name, pid in pids.items():
            main = rss_kib(pid)
            tree = main + sum(rss_kib(child) for child in descendants(pid))
            if main:
                self.samples[name].append((now, pid, main, tree))

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per component: the whole series (restarts included) and its longest-lived process
        alone, the one that shows whether a process grows."""
        out: dict[str, dict[str, Any]] = {}
        for name, points in sorted(self.samples.items()):
            by_pid: dict[int, list[tuple[float, int, int, int]]] = defaultdict(list)
            for point in points:
                by_pid[point[1]].append(point)
            longest = max(by_pid.values(), key=len)
            out[name] = {
                "all": level(points),
                "longest_process": {
                    "minutes": round((longest[-1][0] - longest[0][0]) / 60, 1),
                    **level(longest),
                },
                "processes": len(by_pid),
            }
        return out

    def downsampled(self, every: float = 60.0) -> dict[str, list[list[float]]]:
        out: dict[str, list[list[float]]] = {}
        for name, points in self.samples.items():
            kept, last = [], -every
            for t, _pid, _main, tree in points:
                if t - last >= every:
                    kept.append([round(t), round(tree / 1024, 1)])
                    last = t
            out[name] = kept
        return out


def monitor_loop(
    core: Core,
    stack: Stack,
    checker: SoakChecker,
    rss: RssSeries,
    extra: dict[str, list[list[float]]],
    stop: threading.Event,
) -> None:
    """Every MONITOR_EVERY s: a checker pass (skipped while Redis is down) and the samples."""
    source, raw = RecordSource(core), core.client

    while not stop.wait(MONITOR_EVERY):
        now = time.time()
        rss.sample(stack.pids(), now)
        extra["load1"].append([round(now), round(os.getloadavg()[0], 2)])
        try:
            checker.observe(source, now)
            info = raw.info("memory")
            extra["redis_used_mib"].append([round(now), round(info["used_memory"] / 2**20, 1)])
            extra["redis_keys"].append([round(now), int(raw.dbsize())])
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            checker.failed_passes += 1


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so ``finally`` stops every process either way."""

    def handler(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def chaos_loop(
    stack: Stack,
    events: list[Incarnation],
    rng: random.Random,
    end: float,
    redis_at: float,
    stop: threading.Event,
) -> None:
    """One kill at a time: pause 10-40 s, SIGKILL a random component, keep it down 0-3 s,
    restart it and wait until ready. Redis is killed once, at ``redis_at``."""
    redis_done = False
    while not stop.wait(rng.uniform(10, 40)) and time.time() < end - 30:
        if not redis_done and time.time() >= redis_at:
            name, redis_done = "redis", True
        else:
            name = rng.choice(KILLABLE)
        event = stack.kill_and_restart(name, round(rng.uniform(0, 3), 1))
        events.append(event)
        print(
            f"  {time.strftime('%H:%M:%S')} killed {name}, back after "
            f"{event.ready_at - event.killed_at:.1f}s",
            flush=True,
        )


def run_soak(minutes: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    work = WORK / time.strftime("%Y%m%dT%H%M%S")
    stack = Stack(work)
    schedules = make_schedules(rng)
    write_schedules(stack.folder, schedules)
    checker, rss = SoakChecker(), RssSeries()
    extra: dict[str, list[list[float]]] = defaultdict(list)
    events: list[Incarnation] = []
    stats = ClientStats()
    stop, stop_clients = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    started = time.time()
    load_start = os.getloadavg()
    core = Core.from_settings(Settings(redis_url=stack.redis.url))
    try:
        stack.redis.start()
        for name in ("folder", "beat-0", "beat-1", "worker-0", "worker-1", "api"):
            stack.start(name)
        print(f"soak: stack up in {time.time() - started:.0f}s, logs in {work}", flush=True)
        begin = time.time()
        end = begin + minutes * 60
        threads = [
            threading.Thread(
                target=monitor_loop, args=(core, stack, checker, rss, extra, stop), daemon=True
            ),
            *(
                threading.Thread(
                    target=api_client_loop,
                    args=(stack.api_port, stats, stop_clients, seed + k),
                    daemon=True,
                )
                for k in range(2)
            ),
        ]
        for thread in threads:
            thread.start()
        chaos_loop(stack, events, rng, end, begin + minutes * 30, stop)
        stop.wait(max(0.0, end - time.time()))
        observed_until = time.time()
        # Drain: no new work; what is in flight (a killed worker's runs included, after the
        # visibility timeout) has time to end, as far as the drain allows.
        stop_clients.set()
        for name in ("beat-0", "beat-1"):
            stack.procs[name].stop()
        drain_until = time.time() + 2 * TASK_TIME_LIMIT + 60 + 100
        while time.time() < drain_until:
            time.sleep(MONITOR_EVERY)
            pending = [r for r in checker.records.values() if not r.final]
            api_open = [s for s in stats.submitted if s.final is None]
            if not pending and checker.last_pass > observed_until:
                break
            print(f"  draining: {len(pending)} runs not final, {len(api_open)} api", flush=True)
        stop.set()
        for thread in threads:
            thread.join(30)
        checker.observe(RecordSource(core), time.time())
        api_states = {s.id: core.runs.get(s.id) for s in stats.submitted}
    finally:
        stop.set()
        stop_clients.set()
        stack.close()
        core.close()
    return report(
        minutes,
        seed,
        started,
        load_start,
        schedules,
        checker,
        rss,
        extra,
        events,
        stats,
        api_states,
        observed_until,
    )


def report(
    minutes: float,
    seed: int,
    started: float,
    load_start: tuple[float, float, float],
    schedules: list[Schedule],
    checker: SoakChecker,
    rss: RssSeries,
    extra: dict[str, list[list[float]]],
    events: list[Incarnation],
    stats: ClientStats,
    api_states: dict[str, RunRecord | None],
    observed_until: float,
) -> dict[str, Any]:
    redis_kills = [e for e in events if e.component == "redis"]
    # The unsynced second of appendfsync everysec, with a margin for the fsync's own lag.
    window = [(e.killed_at - 2.0, e.killed_at) for e in redis_kills]

    def in_window(t: float | None) -> bool:
        return t is not None and any(a <= t <= b for a, b in window)

    api_unfinished = {
        s.id: api_states.get(s.id)
        for s in stats.submitted
        if not ((rec := api_states.get(s.id)) is not None and rec.final)
    }
    api_lost_window = [
        i for s in stats.submitted if (i := s.id) in api_unfinished and in_window(s.at)
    ]
    api_lost_other = [
        {"id": i, "record": None if r is None else {"state": r.state, "worker": r.worker}}
        for i, r in api_unfinished.items()
        if i not in api_lost_window
    ]
    lost_final_window = [i for i, (r, _) in checker.lost_final.items() if in_window(r.finished)]
    lost_final_other = [
        {
            "id": i,
            "schedule": r.schedule,
            "slot": r.slot,
            "state": r.state,
            "finished": r.finished,
            "missed_at": at,
        }
        for i, (r, at) in checker.lost_final.items()
        if i not in lost_final_window
    ]
    policy_of = {s.key: s.policy for s in schedules}
    not_final = [r for r in checker.records.values() if not r.final]
    # Only Replace revokes a run; any other REVOKED run was received and then never ran to
    # completion (at-least-once broken), e.g. cancelled by a worker that lost Redis.
    revoked_otherwise = [
        r
        for r in checker.records.values()
        if r.state == "REVOKED" and policy_of.get(r.schedule or "") != "Replace"
    ]
    checks, misses, worst = deadline_misses(
        events, schedules, checker.created_by_schedule(), observed_until
    )
    duplicates = checker.duplicate_slots()
    by_state: dict[str, int] = defaultdict(int)
    for record in checker.records.values():
        by_state[record.state] += 1
    kills: dict[str, int] = defaultdict(int)
    for e in events:
        kills[e.component] += 1
    restart = {
        name: round(max(e.ready_at - e.killed_at for e in events if e.component == name), 1)
        for name in kills
    }
    scheduled = [r for r in checker.records.values() if r.schedule]
    by_policy: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for record in scheduled:
        by_policy[policy_of.get(record.schedule or "", "?")][record.state] += 1
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "minutes": minutes,
        "seed": seed,
        "machine": machine_info(),
        "load_at_start": [round(x, 2) for x in load_start],
        "load1_mean": round(statistics.mean(v for _, v in extra["load1"]), 2)
        if extra["load1"]
        else None,
        "redis": {"appendonly": "yes", "appendfsync": APPENDFSYNC},
        "beat_lock_timeout_s": LOCK_TIMEOUT,
        "task_time_limit_s": TASK_TIME_LIMIT,
        "schedules": {
            "count": len(schedules),
            "policies": {
                p: sum(s.policy == p for s in schedules) for p in ("Allow", "Forbid", "Replace")
            },
            "every_s": [min(s.every for s in schedules), max(s.every for s in schedules)],
        },
        "kills": dict(sorted(kills.items())),
        "longest_restart_s": restart,
        "runs": {
            "records_seen": len(checker.records),
            "scheduled_firings": len(scheduled),
            "by_state": dict(sorted(by_state.items())),
            "scheduled_by_policy": {p: dict(sorted(v.items())) for p, v in by_policy.items()},
            "api_acknowledged": len(stats.submitted),
            "api_refused": stats.refused,
            "api_poll_errors": stats.poll_errors,
            "monitor_passes": checker.passes,
            "monitor_passes_redis_down": checker.failed_passes,
        },
        "invariants": {
            "no_slot_twice": {
                "ok": not duplicates,
                "duplicates": duplicates[:20],
                "count": len(duplicates),
            },
            "final_records_kept": {
                "ok": not lost_final_other,
                "final_seen": len(checker.final_ids),
                "lost_in_redis_kill_window": len(lost_final_window),
                "lost_otherwise": lost_final_other[:20],
                "pending_records_lost": len(checker.lost_pending),
            },
            "api_runs_final": {
                "ok": not api_lost_other,
                "acknowledged": len(stats.submitted),
                "not_final_in_redis_kill_window": len(api_lost_window),
                "not_final_otherwise": api_lost_other[:20],
            },
            "fires_after_recovery": {
                "ok": not misses,
                "checks": checks,
                "misses": misses[:20],
                "miss_count": len(misses),
                "worst_fraction_of_deadline": round(worst, 2),
            },
            "revoked_not_by_replace": {
                "ok": not revoked_otherwise,
                "count": len(revoked_otherwise),
                "runs": [
                    {
                        "id": r.id,
                        "schedule": r.schedule,
                        "reason": r.reason,
                        "received": r.received,
                        "finished": r.finished,
                        "worker": r.worker,
                    }
                    for r in revoked_otherwise[:20]
                ],
            },
            "rss_level": rss.summary(),
        },
        # Grows by design: every run record is kept (7 days) and the histories were raised.
        "redis_memory": {
            name: [extra[name][0][1], extra[name][-1][1]] if extra[name] else None
            for name in ("redis_used_mib", "redis_keys")
        },
        "not_final_at_end": {
            "count": len(not_final),
            # A run a killed worker held (received, not acked) waits for the visibility
            # timeout; one never received was lost with its queued message or is still queued.
            "received_by_a_worker": sum(r.worker is not None for r in not_final),
            "states": dict(
                sorted(
                    {
                        s: sum(r.state == s for r in not_final)
                        for s in {r.state for r in not_final}
                    }.items()
                )
            ),
        },
        "events": [
            [e.component, round(e.killed_at - started, 1), round(e.ready_at - e.killed_at, 1)]
            for e in events
        ],
        "series": {
            "rss_mib": rss.downsampled(),
            **{name: values[::6] for name, values in extra.items()},
        },
    }
    return result


def rss_line(v: dict[str, Any]) -> str:
    return (
        f"{v['first_third_mib']} -> {v['last_third_mib']} ({v['change_pct']:+}%), "
        f"{v['slope_mib_per_hour']:+} MiB/h"
    )


def summary_text(result: dict[str, Any]) -> str:
    inv = result["invariants"]
    lines = [
        f"chaos soak {result['started']}, {result['minutes']} min, seed {result['seed']}, "
        f"load at start {result['load_at_start']}, mean load1 {result['load1_mean']}",
        f"redis: appendonly yes, appendfsync {result['redis']['appendfsync']}",
        "kills: " + ", ".join(f"{k} {v}" for k, v in result["kills"].items()),
        "longest restart (s): "
        + ", ".join(f"{k} {v}" for k, v in result["longest_restart_s"].items()),
        "runs: " + json.dumps(result["runs"]),
        f"no slot twice: {'OK' if inv['no_slot_twice']['ok'] else 'VIOLATED'} "
        f"({inv['no_slot_twice']['count']} duplicates)",
        f"final records kept: {'OK' if inv['final_records_kept']['ok'] else 'VIOLATED'} "
        f"({inv['final_records_kept']['final_seen']} seen final, "
        f"{inv['final_records_kept']['lost_in_redis_kill_window']} lost in the Redis kill "
        f"window, {len(inv['final_records_kept']['lost_otherwise'])} otherwise)",
        f"api runs final: {'OK' if inv['api_runs_final']['ok'] else 'VIOLATED'} "
        f"({inv['api_runs_final']['acknowledged']} acknowledged, "
        f"{inv['api_runs_final']['not_final_in_redis_kill_window']} in the Redis kill window, "
        f"{len(inv['api_runs_final']['not_final_otherwise'])} otherwise)",
        f"fires after recovery: {'OK' if inv['fires_after_recovery']['ok'] else 'VIOLATED'} "
        f"({inv['fires_after_recovery']['checks']} checks, "
        f"{inv['fires_after_recovery']['miss_count']} misses, worst "
        f"{inv['fires_after_recovery']['worst_fraction_of_deadline']} of the deadline)",
        f"revoked, not by Replace: "
        f"{'OK' if inv['revoked_not_by_replace']['ok'] else 'VIOLATED'} "
        f"({inv['revoked_not_by_replace']['count']})",
        "not final at end: " + json.dumps(result["not_final_at_end"]),
        "redis used memory (MiB) and keys, first -> last: " + json.dumps(result["redis_memory"]),
        "RSS (MiB, process tree) first third -> last third, slope per hour; whole series "
        "(restarts included) | longest-lived process:",
        *(
            f"  {name} ({v['processes']} processes): {rss_line(v['all'])} | "
            f"{v['longest_process']['minutes']} min: {rss_line(v['longest_process'])}"
            for name, v in inv["rss_level"].items()
        ),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args()
    with interrupts_raise():
        result = run_soak(args.minutes, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(result_json(result) + "\n")
    text = summary_text(result)
    args.out.with_suffix(".txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
