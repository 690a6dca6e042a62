"""Benchmark 9, worker throughput: how fast one worker drains a queue of noop runs, Forwarder's
worker (every run recorded) against a plain Celery app with the same settings.

``python bench/worker_throughput.py [--n N] [--rounds R]``, or ``python bench/run.py --only
worker_throughput [--full]`` (N = 2,000, 3 rounds; 10,000 and 5 rounds with ``--full``).

Each pass, on a fresh Valkey: N runs of ``bench.noop`` (one Redis INCR) are queued with no
worker running, then one worker is started (prefork, concurrency 2, the bench harness's
worker command) and drains them.

* Forwarder: ``celery -A forwarder_worker.app worker``, the chart's worker. The runs are
  fired through the dispatcher as run-now triggers of a few schedules (record and message in
  one step, as beat and the api send them), so the worker records each one as it does any
  user's run: received, started, succeeded with its result, the histories, the schedule's
  counters and active set, the durations.
* Anchor: ``celery -A plain_celery worker`` (bench/plain_celery.py), a plain Celery app whose
  settings are copied from a Forwarder app (serializers, late acks, prefetch, task events,
  started state, extended results, time limits, transport options and key prefix) with
  Celery's own Redis result backend; the runs are sent with ``send_task``.

The drain is timed from the moment 10% of the runs are done (the worker's start-up left out)
to the last one, sampling the tasks' own counter every 5 ms; the worker's CPU (its main
process and its pool processes, from /proc) over the same span, per task. Rounds alternate
which side goes first; rows are medians. Afterwards every Forwarder run is checked to be
recorded in full (final state SUCCESS with its received, started, finished, worker and result
fields, its schedule's counters and histories, the durations), and every plain result to be
stored, so a side cannot be fast by leaving its work undone.

One more pass per side, untimed, runs a few hundred tasks under ``MONITOR`` to count the Redis
commands each run costs: sent by the clients (each a request, or part of a pipeline) and run
inside scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import threading
import time
from collections import Counter
from typing import Any

import redis
from celery import Celery
from forwarder_worker import Core, Settings
from forwarder_worker.dispatch.dispatcher import Firing
from harness import (
    DONE_KEY,
    QUEUE_KEY,
    bench_env,
    child_pids,
    commit,
    cpu_seconds,
    eventually,
    redis_for,
    show,
    table,
    work_dir,
    worker_args,
    write_result,
)
from support.bounded_load import create_schedules
from support.processes import Proc, start

QUICK_N = 2000
FULL_N = 10_000
QUICK_ROUNDS = 3
FULL_ROUNDS = 5
WARM = 0.1  # the share of runs done before the clock starts (the worker's start-up)
SCHEDULES = 4
BATCH = 500
MONITORED = 300
TASK = "bench.noop"
KINDS = ("plain", "forwarder")
# The Celery settings a plain app copies from Forwarder's (everything a worker's per-task
# work depends on; the result backend is Celery's own, the task class Celery's default).
COPIED = (
    "task_serializer",
    "result_serializer",
    "event_serializer",
    "accept_content",
    "result_accept_content",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "worker_prefetch_multiplier",
    "worker_send_task_events",
    "task_send_sent_event",
    "task_track_started",
    "result_extended",
    "result_expires",
    "task_time_limit",
    "task_soft_time_limit",
    "task_default_queue",
    "task_create_missing_queues",
    "broker_transport_options",
    "result_backend_transport_options",
    "broker_connection_retry_on_startup",
    "worker_cancel_long_running_tasks_on_connection_loss",
)


def plain_conf(core: Core) -> dict[str, Any]:
    """The settings of ``core``'s app that the plain app takes."""
    return {name: core.app.conf[name] for name in COPIED}


def _fill_forwarder(core: Core, n: int) -> list[str]:
    """Queue ``n`` runs as run-now triggers of the bench schedules; their ids."""
    names = create_schedules(core, SCHEDULES, task=TASK)
    entries = []
    for name in names:
        stored = core.store.get(name)
        assert stored is not None
        entries.append(stored.entry)
    ids: list[str] = []
    while len(ids) < n:
        now = time.time()
        size = min(BATCH, n - len(ids))
        firings = [
            Firing(entries[(len(ids) + i) % len(entries)], now, "trigger") for i in range(size)
        ]
        outcomes = core.dispatcher.fire(firings)
        if not all(outcome.sent for outcome in outcomes):
            raise RuntimeError(f"a firing was not sent: {outcomes}")
        ids += [outcome.run_id for outcome in outcomes]
    return ids


def _fill_plain(app: Celery, n: int) -> list[str]:
    """Queue ``n`` runs with ``send_task``; their ids."""
    ids = []
    with app.producer_or_acquire() as producer:
        for i in range(n):
            ids.append(app.send_task(TASK, args=[i], producer=producer, queue="default").id)
    return ids


def _check_forwarder(core: Core, ids: list[str]) -> dict[str, Any]:
    """Every run recorded in full; raises if one is not."""
    runs = core.runs
    records = runs.records(ids)
    missing = len(ids) - len(records)
    incomplete = [
        r.id
        for r in records
        if r.state != "SUCCESS"
        or None
        in (r.created, r.received, r.started, r.finished, r.worker, r.result, r.schedule, r.slot)
        or not r.started <= r.finished  # type: ignore[operator]
    ]
    names = sorted({r.schedule for r in records if r.schedule})
    summaries = [runs.summary(name) for name in names]
    succeeded = sum(s.succeeded for s in summaries)
    active = sum(len(a) for a in runs.active(names).values())
    histories = [core.client.zcard(core.keys.schedule_runs(name)) for name in names]
    limit = core.settings.run_history_limit
    per_schedule = [min(limit, ids_of) for ids_of in Counter(r.schedule for r in records).values()]
    durations = sum(
        int(v) for k, v in runs.durations().get(TASK, {}).items() if k.startswith("le_")
    )
    in_global = core.client.zcard(core.keys.runs)
    problems = {
        "missing records": missing,
        "records not complete": len(incomplete),
        "schedule counters off": len(ids) - succeeded,
        "runs still active": active,
        "schedule histories off": int(sorted(histories) != sorted(per_schedule)),
        "durations off": len(ids) - durations,
        "global history off": min(len(ids), core.settings.global_history_limit) - in_global,
    }
    if any(problems.values()):
        raise RuntimeError(f"runs not recorded in full: {problems} (e.g. {incomplete[:3]})")
    return {"records": len(records), "succeeded": succeeded, "durations_counted": durations}


def _check_plain(client: redis.Redis, prefix: str, ids: list[str]) -> dict[str, Any]:
    """Every plain result stored as SUCCESS; raises if one is not."""
    with client.pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.get(f"{prefix}celery-task-meta-{task_id}")
        stored = [json.loads(raw) if raw else {} for raw in pipe.execute()]
    ok = sum(1 for meta in stored if meta.get("status") == "SUCCESS")
    if ok != len(ids):
        raise RuntimeError(f"plain: {len(ids) - ok} results not stored as SUCCESS")
    return {"results": ok}


def _cpu(proc: Proc, server: int) -> tuple[float, float, float]:
    """CPU seconds so far of the worker's main process, of its pool processes, and of Redis
    (process ``server``)."""
    pool = 0.0
    for child in child_pids(proc.pid):
        with contextlib.suppress(OSError):  # a pool process that just exited
            pool += cpu_seconds(child)
    return cpu_seconds(proc.pid), pool, cpu_seconds(server)


class _Monitor:
    """Counts the commands Redis runs (MONITOR) in a thread: sent by clients, and run inside
    scripts, by command name."""

    END = "bench:monitor:end"

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.sent: Counter[str] = Counter()
        self.scripted: Counter[str] = Counter()
        self._ended = threading.Event()
        self._monitor = self.client.monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for command in self._monitor.listen():
                text = command["command"]
                if self.END in text:
                    self._ended.set()
                    return
                name = text.split(" ", 1)[0].upper()
                if command.get("client_type") == "lua":
                    self.scripted[name] += 1
                else:
                    self.sent[name] += 1
        except (redis.ConnectionError, ValueError, AttributeError):
            pass  # closed

    def close(self) -> None:
        """Stop counting, once every command sent so far is counted (a marker sent last)."""
        if self._ended.is_set() or not self._thread.is_alive():
            return
        self.client.echo(self.END)
        self._ended.wait(30)
        self._monitor.__exit__()
        self._thread.join(5)
        self.client.close()


def one_pass(kind: str, n: int, tag: str, monitor: bool = False) -> dict[str, Any]:
    """Queue ``n`` runs, start a ``kind`` worker and time its drain."""
    logs = work_dir("worker_throughput")
    with redis_for(tag) as url:
        settings = Settings(redis_url=url)
        core = Core.from_settings(settings)
        client = redis.Redis.from_url(url, decode_responses=True)
        plain: Celery | None = None
        env = bench_env(url)
        try:
            if kind == "forwarder":
                ids = _fill_forwarder(core, n)
                args = worker_args()
            else:
                conf = plain_conf(core)
                plain = Celery("plain", broker=url, backend=url, set_as_current=False)
                plain.conf.update(conf)
                ids = _fill_plain(plain, n)
                env["BENCH_PLAIN_CONF"] = json.dumps(conf)
                args = worker_args("plain_celery")
            queued = int(client.llen(QUEUE_KEY))
            if queued != n:
                raise RuntimeError(f"{tag}: {queued} messages queued, not {n}")
            watch = _Monitor(url) if monitor else None
            server = int(client.info("server")["process_id"])
            proc = start(args, env, logs / f"{tag}.log", tag)
            try:
                warm = max(1, int(n * WARM))
                polls = 0
                t0 = cpu0 = None
                deadline = time.monotonic() + 60 + n / 20
                while True:
                    done = int(client.get(DONE_KEY) or 0)
                    polls += 1
                    now = time.perf_counter()
                    if t0 is None and done >= warm:
                        t0, done0, cpu0 = now, done, _cpu(proc, server)
                        client.config_resetstat()
                    if done >= n:
                        cpu1 = _cpu(proc, server)
                        stats = client.info("commandstats")
                        break
                    if time.monotonic() > deadline or not proc.alive():
                        raise RuntimeError(f"{tag}: {done} of {n} done\n{proc.output()[-3000:]}")
                    time.sleep(0.005)
                assert t0 is not None
                assert cpu0 is not None
                if watch is not None:
                    time.sleep(0.5)  # the last runs' ends
                    watch.close()

                # The last run's record or result is written just after its body's INCR.
                if kind == "forwarder":
                    eventually(
                        lambda: all(r.final for r in core.runs.records(ids[-50:])),
                        timeout=30,
                        interval=0.05,
                        message="the last runs recorded",
                    )
                    check = _check_forwarder(core, ids)
                else:
                    time.sleep(0.5)
                    check = _check_plain(client, settings.key_prefix, ids)
            finally:
                if watch is not None:
                    watch.close()
                proc.stop()
        finally:
            core.close()
            client.close()
            if plain is not None:
                plain.close()
    seconds = now - t0
    tasks = n - done0
    out: dict[str, Any] = {
        "kind": kind,
        "n": n,
        "timed_tasks": tasks,
        "seconds": seconds,
        "tasks_per_second": tasks / seconds,
        "cpu_ms_per_task": (sum(cpu1[:2]) - sum(cpu0[:2])) / tasks * 1000,
        "main_cpu_ms_per_task": (cpu1[0] - cpu0[0]) / tasks * 1000,
        "pool_cpu_ms_per_task": (cpu1[1] - cpu0[1]) / tasks * 1000,
        "redis_cpu_ms_per_task": (cpu1[2] - cpu0[2]) / tasks * 1000,
        # Redis's own time per run by command (a script's time includes its commands').
        "redis_us_per_task": {
            name.removeprefix("cmdstat_"): round(figures["usec"] / tasks, 1)
            for name, figures in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])
            if figures["usec"] / tasks >= 0.5
        },
        "check": check,
    }
    if watch is not None:
        # The sampler's own GETs and the MONITOR connection are not the worker's.
        watch.sent["GET"] -= polls
        out["commands_per_run"] = {
            "sent": round(sum(watch.sent.values()) / n, 2),
            "in_scripts": round(sum(watch.scripted.values()) / n, 2),
            "sent_by_name": {k: round(v / n, 2) for k, v in watch.sent.most_common() if v > 0},
            "in_scripts_by_name": {k: round(v / n, 2) for k, v in watch.scripted.most_common()},
        }
    return out


def measure(n: int, rounds: int) -> dict[str, Any]:
    """``rounds`` timed passes per side, alternating which goes first, then the counted ones."""
    passes: list[dict[str, Any]] = []
    for r in range(rounds):
        order = KINDS if r % 2 == 0 else tuple(reversed(KINDS))
        for kind in order:
            result = one_pass(kind, n, f"{kind}-{n}-{r}")
            result["round"] = r
            passes.append(result)
            print(
                f"   round {r}: {kind:<9} {result['tasks_per_second']:7.1f} tasks/s, "
                f"{result['cpu_ms_per_task']:.3f} ms CPU/task (main "
                f"{result['main_cpu_ms_per_task']:.3f}, pool {result['pool_cpu_ms_per_task']:.3f}, "
                f"redis {result['redis_cpu_ms_per_task']:.3f})",
                flush=True,
            )
    counted = {kind: one_pass(kind, MONITORED, f"{kind}-monitor", monitor=True) for kind in KINDS}

    def median(kind: str, key: str) -> float:
        return statistics.median(p[key] for p in passes if p["kind"] == kind)

    rows = [
        (
            f"N={n}: tasks/s",
            median("plain", "tasks_per_second"),
            median("forwarder", "tasks_per_second"),
            "/s",
        ),
        (
            f"N={n}: worker CPU per task",
            median("plain", "cpu_ms_per_task"),
            median("forwarder", "cpu_ms_per_task"),
            "ms",
        ),
        (
            f"N={n}: Redis CPU per task",
            median("plain", "redis_cpu_ms_per_task"),
            median("forwarder", "redis_cpu_ms_per_task"),
            "ms",
        ),
        (
            "Redis commands per run, sent",
            counted["plain"]["commands_per_run"]["sent"],
            counted["forwarder"]["commands_per_run"]["sent"],
            "",
        ),
        (
            "Redis commands per run, in scripts",
            counted["plain"]["commands_per_run"]["in_scripts"],
            counted["forwarder"]["commands_per_run"]["in_scripts"],
            "",
        ),
    ]
    show("Worker throughput (plain Celery as anchor; medians)", rows)
    share = median("forwarder", "tasks_per_second") / median("plain", "tasks_per_second")
    print(f"   forwarder / plain throughput: {share:.1%} (target: at least 90%)")
    for kind in KINDS:
        got = counted[kind]["commands_per_run"]
        print(f"   {kind} commands per run, sent: {got['sent_by_name']}")
        print(f"   {kind} commands per run, in scripts: {got['in_scripts_by_name']}")
    return {
        "n": n,
        "rounds": rounds,
        "throughput_share": share,
        "target": "Forwarder's worker at least 90% of plain Celery's throughput",
        "passes": passes,
        "commands": counted,
        "rows": table(rows),
    }


def run(full: bool, sizes: list[int] | None = None, rounds: int | None = None) -> dict[str, Any]:
    """N = 2,000, 3 rounds (10,000 and 5 with ``full``), or ``sizes[0]``."""
    n = sizes[0] if sizes else (FULL_N if full else QUICK_N)
    data = {
        "mode": "full" if full else "quick",
        "commit": commit(),
        "drive": "N noop runs queued with no worker, then one worker (prefork, concurrency 2) "
        "started; the drain timed from 10% of the runs done to the last, the tasks' counter "
        "sampled every 5 ms; worker CPU (main and pool processes, /proc) over the same span; "
        "rounds alternate which side goes first; one Valkey per pass",
        **measure(n, rounds or (FULL_ROUNDS if full else QUICK_ROUNDS)),
    }
    write_result("worker_throughput", data)
    return data


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=QUICK_N)
    parser.add_argument("--rounds", type=int, default=QUICK_ROUNDS)
    args = parser.parse_args()
    run(False, [args.n], args.rounds)
