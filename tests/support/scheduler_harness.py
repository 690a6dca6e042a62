"""The scheduler suite's harness: one Redis, the beats and workers a test starts on it, and
readers for entries, run records, metrics and Redis command counts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import redis
from forwarder_worker import Core, Settings
from forwarder_worker.runs.records import RunRecord
from forwarder_worker.schedules.store import Entry, ScheduleStore

from support.processes import Proc, celery_beat, celery_worker, eventually, forwarder_env

PREFIX = "forwarder:"
TASK_MODULES = "support.sample_tasks,support.scheduler_tasks"


def stop_firing(store: ScheduleStore, name: str) -> None:
    """Suspend entry ``name``: beat fires it no more, and its runs' history stays readable
    (a delete would take the history with it)."""
    stored = store.get(name)
    if stored is None:
        raise LookupError(f"no entry {name}")
    store.upsert(dataclasses.replace(stored.entry, suspend=True))


class Harness:
    """One Redis plus the beats and workers a test starts against it."""

    def __init__(self, url: str, client: redis.Redis, logs: Path) -> None:
        self.url = url
        self.client = client
        self.logs = logs
        self.core = Core.from_settings(Settings(redis_url=url, key_prefix=PREFIX))
        self.store = self.core.store
        self.runs = self.core.runs
        self.metrics = self.core.metrics
        self.procs: list[Proc] = []

    def env(self, **overrides: str) -> dict[str, str]:
        return forwarder_env(self.url, FORWARDER_TASK_MODULES=TASK_MODULES, **overrides)

    def beat(self, name: str = "beat", **overrides: str) -> Proc:
        """Start a beat (``FORWARDER_*`` overrides as keyword arguments)."""
        settings = {"FORWARDER_" + k.upper(): str(v) for k, v in overrides.items()}
        proc = celery_beat(self.env(**settings), self.new_log(name), name)
        self.procs.append(proc)
        return proc

    def worker(self, name: str = "worker", concurrency: int = 2, **overrides: str) -> Proc:
        settings = {"FORWARDER_" + k.upper(): str(v) for k, v in overrides.items()}
        proc = celery_worker(
            self.env(**settings), self.new_log(name), concurrency=concurrency, name=name
        )
        self.procs.append(proc)
        return proc

    def new_log(self, name: str) -> Path:
        """A log file no earlier process wrote, so waiting for a line sees this one's."""
        log, n = self.logs / f"{name}.log", 1
        while log.exists():
            n += 1
            log = self.logs / f"{name}-{n}.log"
        return log

    def wait_ready(self, proc: Proc, text: str = "acquired the lock", timeout: float = 30) -> None:
        eventually(lambda: text in proc.output(), timeout, 0.1, f"{proc.name}: {text!r}")

    def add(self, name: str, schedule: dict[str, Any], **fields: Any) -> Entry:
        """Upsert entry ``name`` (``<namespace>/<name>``) and return it."""
        fields.setdefault("task", "forwarder.ping")
        fields.setdefault("uid", f"uid-{name}")
        entry = Entry(name=name, schedule=schedule, **fields)
        self.store.upsert(entry)
        return entry

    def records(self, schedule: str) -> list[RunRecord]:
        """Every run record of ``schedule``, oldest first."""
        found = self.runs.recent(schedule=schedule, limit=100_000)
        return sorted(found, key=lambda r: (r.created or 0, r.slot or 0))

    def fired(self, schedule: str) -> list[RunRecord]:
        """The runs beat sent for ``schedule`` (skipped ones left out), oldest first."""
        return [r for r in self.records(schedule) if r.state != "SKIPPED"]

    def metric(self, name: str) -> float:
        return self.metrics.read().get(name, 0.0)

    def commands(self) -> int:
        """Commands Redis has run since the last ``CONFIG RESETSTAT``."""
        stats = self.client.info("commandstats")
        return sum(int(v["calls"]) for v in stats.values())

    def stop_all(self, failed: bool) -> None:
        self.core.close()
        for proc in self.procs:
            proc.stop()
            if failed:
                print(f"----- {proc.name} log -----\n{proc.output()[-6000:]}")
