"""Runs put through a real worker as fast as it takes them, and what Redis holds meanwhile:
the load behind the bounded-storage test (tests/worker/test_bounded_storage.py) and its
benchmark (bench/bounded_storage.py), so both measure the same thing.

Runs are fired through the dispatcher, as run-now triggers of a few schedules (each firing
writes its run record and puts its message on the queue in one step, as beat's and the api's
do), in batches, keeping the queue short: the worker records every run from there (received,
started, succeeded), so every key a run touches is written: its record, Celery's result, the
histories, the schedule's counters and active set, the changed set, the durations.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from forwarder_worker import Core
from forwarder_worker.dispatch.dispatcher import Firing
from forwarder_worker.queues import QueueLengths
from forwarder_worker.schedules.reconcile import apply_schedule

from support.processes import eventually

QUEUE = "default"


@dataclass(frozen=True)
class Footprint:
    """What Redis held after ``runs`` runs."""

    runs: int
    keys: int  # DBSIZE
    used_memory: int  # INFO memory used_memory, bytes
    seconds: float  # since the load started

    def as_json(self) -> dict[str, float]:
        return {
            "runs": self.runs,
            "keys": self.keys,
            "used_memory": self.used_memory,
            "seconds": round(self.seconds, 1),
        }


def create_schedules(core: Core, count: int, task: str = "forwarder.ping") -> list[str]:
    """``count`` schedules of ``task`` (hourly: only the load's triggers run them)."""
    names = []
    for i in range(count):
        raw = {"task": task, "schedule": {"every": "1h"}}
        result = apply_schedule(core.store, "load", f"s{i}", raw, uid=f"uid-{i}")
        if not result.ready:
            raise RuntimeError(f"schedule load/s{i} not applied: {result.message}")
        names.append(f"load/s{i}")
    return names


def footprint(core: Core, runs: int, began: float) -> Footprint:
    """Redis's key count and memory now."""
    memory = core.client.info("memory")["used_memory"]
    return Footprint(runs, int(core.client.dbsize()), int(memory), time.monotonic() - began)


def expired(core: Core, runs: int, began: float, timeout: float = 60.0) -> Footprint:
    """Redis's footprint once every run record and Celery result has expired (waited for:
    one record ttl, then until none is left)."""
    client, prefix = core.client, core.settings.key_prefix
    time.sleep(core.settings.result_expires + 1)

    def gone() -> bool:
        # SCAN also expires the keys it meets, so this does not wait for Redis's own cycle.
        return not any(
            True
            for pattern in (f"{prefix}run:*", f"{prefix}celery-task-meta-*")
            for _ in client.scan_iter(match=pattern, count=1000)
        )

    eventually(gone, timeout, 0.5, message="run records and results expired")
    return footprint(core, runs, began)


class Load:
    """Fires runs of ``names`` round robin, ``batch`` at a time, never more than ``backlog``
    waiting on the queue."""

    def __init__(
        self, core: Core, names: Sequence[str], *, batch: int = 100, backlog: int = 300
    ) -> None:
        self.core = core
        self.entries = []
        for name in names:
            stored = core.store.get(name)
            if stored is None:
                raise LookupError(f"no schedule {name}")
            self.entries.append(stored.entry)
        self.batch = batch
        self.backlog = backlog
        self.queues = QueueLengths(core.app, core.client)
        self.fired = 0

    def waiting(self) -> int:
        return self.queues.read()[QUEUE]

    def fire(self, n: int) -> None:
        """Fire ``n`` more runs, waiting for the queue to shorten between batches."""
        goal = self.fired + n
        while self.fired < goal:
            while self.waiting() > self.backlog:
                time.sleep(0.05)
            size = min(self.batch, goal - self.fired)
            now = time.time()
            firings = [
                Firing(self.entries[(self.fired + i) % len(self.entries)], now, "trigger")
                for i in range(size)
            ]
            outcomes = self.core.dispatcher.fire(firings)
            if not all(outcome.sent for outcome in outcomes):
                raise RuntimeError(f"a firing was not sent: {outcomes}")
            self.fired += size

    def drain(self, timeout: float = 300.0) -> None:
        """Wait until the worker has taken and finished every run fired (queue empty, no
        run of the schedules still active)."""
        names = [entry.name for entry in self.entries]

        def idle() -> bool:
            active = self.core.runs.active(names)
            return self.waiting() == 0 and not any(
                run.state not in (None, "SUCCESS") for runs in active.values() for run in runs
            )

        eventually(idle, timeout, 0.2, message="every run fired has ended")
