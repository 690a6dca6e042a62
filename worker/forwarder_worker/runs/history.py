"""Exporting finished tasks and runs to JSON Lines files, once each.

This is the tutorial's "collect task logs into permanent storage". Flower keeps its task
history in memory and run records expire with results, so a schedule runs
``forwarder.collect_task_history`` (:mod:`forwarder_worker.tasks.history`; see
``manifests/samples/collect-history.yaml``) to append every finished Flower task and run
record to day files on a volume:

    <dir>/flower-tasks-YYYY-MM-DD.jsonl   one Flower task (all its fields) per line
    <dir>/runs-YYYY-MM-DD.jsonl           one run record per line

An index in Redis (``<prefix>history:exported``, scored by export time) makes the export
idempotent: a task already exported is skipped, so overlapping or repeated runs add nothing.
Lines are written and synced before the index is updated, so a crash in between can repeat
a line but never lose one. Day files and index entries older than the retention are removed;
items older than the retention are not exported at all, so pruning never re-exports them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import redis
from celery import states
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from forwarder_worker._redis.keys import Keys
from forwarder_worker.runs.records import FINAL_STATES, RunLog
from forwarder_worker.settings import FlowerSettings

log = logging.getLogger("forwarder.history")

FLOWER_FINAL = frozenset(states.READY_STATES) | {"REJECTED", "IGNORED"}
_CHUNK = 500


class HistorySettings(FlowerSettings):
    """Where history goes and how to reach Flower (``FORWARDER_`` env vars)."""

    model_config = SettingsConfigDict(env_prefix="FORWARDER_", extra="ignore")

    history_dir: Path = Path(".forwarder/history")
    """Folder of the JSON Lines files (a volume in the chart)."""

    history_retention_days: int = Field(default=30, ge=1, le=3650)
    """Days of day files (and of the export index) kept."""


def fetch_flower_tasks(settings: HistorySettings) -> dict[str, Any]:
    """Flower's ``/api/tasks`` (uuid -> task), raising httpx2 errors on failure."""
    response = httpx2.get(
        f"{settings.flower_url.rstrip('/')}/api/tasks",
        auth=settings.flower_auth(),
        timeout=settings.flower_timeout,
    )
    response.raise_for_status()
    data = response.json()
    return data if isinstance(data, dict) else {}


class HistoryExporter:
    """Appends not-yet-exported finished items to day files and records them in the index."""

    def __init__(
        self, client: redis.Redis, keys: Keys, directory: Path, retention_days: int
    ) -> None:
        self.client = client
        self.directory = directory
        self.retention = retention_days * 86400
        self.index_key = keys.exported
        self.lock = client.lock(keys.history_lock, timeout=600, blocking=False)

    def _new(self, ids: list[str]) -> list[bool]:
        if not ids:
            return []
        scores = self.client.zmscore(self.index_key, ids)
        return [score is None for score in scores]

    def _append(self, kind: str, items: list[tuple[str, dict[str, Any]]], now: float) -> int:
        """Write ``items`` (index id, line) not exported yet; returns how many were written."""
        fresh = [
            item for item, new in zip(items, self._new([i for i, _ in items]), strict=True) if new
        ]
        if not fresh:
            return 0
        day = datetime.fromtimestamp(now, UTC).date().isoformat()
        path = self.directory / f"{kind}-{day}.jsonl"
        with path.open("a", encoding="utf-8") as handle:
            for _, line in fresh:
                handle.write(json.dumps(line, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.client.zadd(self.index_key, {item_id: now for item_id, _ in fresh})
        return len(fresh)

    def export_flower(self, tasks: dict[str, Any], now: float) -> int:
        """Finished Flower tasks within the retention, each once."""
        horizon = now - self.retention
        items = []
        for uuid, info in sorted(tasks.items(), key=lambda kv: _num(kv[1].get("received"))):
            if not isinstance(info, dict) or info.get("state") not in FLOWER_FINAL:
                continue
            if _num(info.get("timestamp") or info.get("received")) < horizon:
                continue
            items.append((f"flower:{uuid}", {"exported_at": now, **info, "uuid": uuid}))
        return sum(self._append("flower-tasks", chunk, now) for chunk in _chunks(items))

    def export_runs(self, runs: RunLog, now: float) -> int:
        """Finished run records within the retention, each once, oldest first."""
        horizon = now - self.retention
        written = 0
        for chunk in _chunks(runs.ids_since(horizon)):
            records = runs.records(chunk)
            items = [
                (f"run:{r.id}", {"exported_at": now, **asdict(r)})
                for r in records
                if r.state in FINAL_STATES
            ]
            written += self._append("runs", items, now)
        return written

    def prune(self, now: float) -> list[str]:
        """Remove day files and index entries older than the retention."""
        self.client.zremrangebyscore(self.index_key, "-inf", now - self.retention)
        oldest = datetime.fromtimestamp(now, UTC).date() - timedelta(seconds=self.retention)
        removed = []
        for path in sorted(self.directory.glob("*.jsonl")):
            day = _file_day(path)
            if day is not None and day < oldest:
                path.unlink()
                removed.append(path.name)
        return removed


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("-inf")


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _file_day(path: Path) -> date | None:
    try:
        return date.fromisoformat(path.stem[-10:])
    except ValueError:
        return None


def collect(
    runs: RunLog,
    settings: HistorySettings,
    *,
    directory: Path | None = None,
    retention_days: int | None = None,
    flower: bool = True,
    now: float | None = None,
) -> dict[str, Any]:
    """One export pass; what the task returns."""
    now = time.time() if now is None else now
    target = directory or settings.history_dir
    target.mkdir(parents=True, exist_ok=True)
    exporter = HistoryExporter(
        runs.client, runs.keys, target, retention_days or settings.history_retention_days
    )
    if not exporter.lock.acquire():
        return {"directory": str(target), "skipped": "another export is running"}
    try:
        report: dict[str, Any] = {"directory": str(target), "flower_tasks": 0, "flower_error": None}
        if flower:
            try:
                report["flower_tasks"] = exporter.export_flower(fetch_flower_tasks(settings), now)
            except (httpx2.HTTPError, ValueError) as exc:
                # Run records are still worth keeping while Flower is away.
                report["flower_error"] = f"{type(exc).__name__}: {exc}"
                log.warning("history: Flower unavailable: %s", exc)
        report["runs"] = exporter.export_runs(runs, now)
        report["removed_files"] = exporter.prune(now)
        return report
    finally:
        exporter.lock.release()


def subfolder(base: Path, name: str | None) -> Path:
    """``base`` or a folder inside it: a run (submitted through the API, say) cannot make the
    worker write or prune files anywhere else."""
    if not name:
        return base
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"directory {name!r} must be a relative folder inside {base}")
    return base / relative
