"""``forwarder.collect_task_history``: export finished Flower tasks and run records as JSON
Lines, each once (the export itself is :mod:`forwarder_worker.runs.history`).
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from forwarder_worker._redis.clients import redis_client
from forwarder_worker.runs.history import HistorySettings, collect, subfolder
from forwarder_worker.runs.records import RunLog
from forwarder_worker.settings import settings_of


@shared_task(name="forwarder.collect_task_history", bind=True)
def collect_task_history(
    self: Task,
    directory: str | None = None,
    retention_days: int | None = None,
    flower: bool = True,
) -> dict[str, Any]:
    """Export finished Flower tasks and run records as JSON Lines, each once (see module).
    ``directory`` is a folder inside ``FORWARDER_HISTORY_DIR``."""
    settings = HistorySettings()
    target = subfolder(settings.history_dir, directory)
    core = settings_of(self.app)
    client = redis_client(core)
    try:
        runs = RunLog(client, core.key_prefix)
        return collect(
            client,
            runs,
            settings,
            directory=target,
            retention_days=retention_days,
            flower=flower,
        )
    finally:
        client.close()
