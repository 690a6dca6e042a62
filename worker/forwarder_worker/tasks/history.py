"""``forwarder.collect_task_history``: export finished Flower tasks and run records as JSON
Lines, each once (the export itself is :mod:`forwarder_worker.runs.history`).
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from forwarder_worker.core import require_core
from forwarder_worker.runs.history import HistorySettings, collect, subfolder


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
    return collect(
        require_core(self.app).runs,
        settings,
        directory=target,
        retention_days=retention_days,
        flower=flower,
    )
