"""Which tasks may be submitted: the registered tasks, filtered by the allow-list.

A task is known if the workers report it (asked with ``inspect().registered()`` and cached
briefly) or if this process registers it from the same task modules the workers load (so a
brief worker outage does not turn every submission into a 404; the message waits in the
queue). A known task is submittable if the allow-list allows it. Celery's own ``celery.*``
tasks never are.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase

from celery import Celery
from forwarder_worker.core import BUILTIN_TASK_MODULES

from forwarder_api.errors import NotFound
from forwarder_api.settings import ApiSettings

log = logging.getLogger("forwarder.api")

DEFAULT_PATTERNS = ("forwarder.*",)


@dataclass(frozen=True)
class TaskInfo:
    """A submittable task and the workers that reported it (empty: none answered)."""

    name: str
    workers: tuple[str, ...]


class TaskCatalog:
    """The allow-listed view of the registered tasks."""

    def __init__(self, app: Celery, settings: ApiSettings) -> None:
        self.app = app
        self.patterns = tuple(settings.api_tasks)
        self.task_modules = tuple(settings.task_modules)
        self.cache_seconds = settings.api_tasks_cache_seconds
        self.inspect_timeout = settings.api_inspect_timeout
        self._lock = threading.Lock()
        self._cached: dict[str, tuple[str, ...]] = {}
        self._cached_at = float("-inf")
        self._local: dict[str, str] | None = None

    def local_tasks(self) -> dict[str, str]:
        """Tasks this process registers from the configured modules: name -> module."""
        if self._local is None:
            try:
                self.app.loader.import_default_modules()
            except ImportError as exc:
                # The API image may lack a user module's own dependencies; workers still
                # report those tasks, and an explicit allow-list pattern admits them.
                log.warning("could not import every task module: %s", exc)
            self._local = {
                name: str(getattr(task, "__module__", "") or "")
                for name, task in self.app.tasks.items()
                if not name.startswith("celery.")
            }
        return self._local

    def worker_tasks(self) -> dict[str, tuple[str, ...]]:
        """Task name -> workers that registered it, cached for ``cache_seconds``."""
        with self._lock:
            if time.monotonic() - self._cached_at < self.cache_seconds:
                return self._cached
            replies = self.app.control.inspect(timeout=self.inspect_timeout).registered() or {}
            by_task: dict[str, list[str]] = {}
            for worker, names in replies.items():
                for item in names or []:
                    # Items read "name [key=value ...]" when extra info is asked for.
                    by_task.setdefault(str(item).split(" ", 1)[0], []).append(worker)
            self._cached = {name: tuple(sorted(ws)) for name, ws in by_task.items()}
            self._cached_at = time.monotonic()
            return self._cached

    def allows(self, name: str) -> bool:
        """Whether the allow-list admits ``name`` (known or not)."""
        if name.startswith("celery."):
            return False
        if self.patterns:
            return any(fnmatchcase(name, pattern) for pattern in self.patterns)
        if any(fnmatchcase(name, pattern) for pattern in DEFAULT_PATTERNS):
            return True
        module = self.local_tasks().get(name, "")
        return any(
            module == m or module.startswith(f"{m}.")
            for m in (*self.task_modules, *BUILTIN_TASK_MODULES)
        )

    def listing(self) -> list[TaskInfo]:
        """Every submittable task, by name."""
        workers = self.worker_tasks()
        names = set(workers) | set(self.local_tasks())
        return [TaskInfo(n, workers.get(n, ())) for n in sorted(names) if self.allows(n)]

    def require(self, name: str) -> None:
        """Raise 404 unless ``name`` is submittable."""
        if not self.allows(name):
            raise NotFound(f"task {name!r} is not submittable through the API (allow-list)")
        if name not in self.local_tasks() and name not in self.worker_tasks():
            raise NotFound(f"task {name!r} is not registered by this API or any worker")

    def required_at_once(self, name: str) -> bool:
        """:meth:`require` where it can answer without blocking (no module import, no
        question to the workers): True if ``name`` is submittable, NotFound as
        :meth:`require` raises it; False where only :meth:`require` can tell."""
        if self._local is None:
            return False  # the task modules are not imported yet
        if not self.allows(name):
            raise NotFound(f"task {name!r} is not submittable through the API (allow-list)")
        if name in self._local:
            return True
        fresh = time.monotonic() - self._cached_at < self.cache_seconds
        return fresh and name in self._cached

    def known(self) -> set[str]:
        """Every registered task name, allowed or not (for schedule validation)."""
        return set(self.local_tasks())
