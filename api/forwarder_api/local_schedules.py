"""Local mode's schedules: ScheduledTask YAML files in the folder the folder source watches.

The API only edits files; the folder source notices and applies them to Redis, exactly as
it does for a hand edit. A new schedule goes to ``<name>.yaml`` (namespace ``default``) or
``<namespace>.<name>.yaml``; an existing one is edited in whichever file declares it. Files
are replaced atomically (a temp file, then rename), so the watcher never reads half a file.
Status comes from the schedule store and the run records, the same data the operator puts
in a resource's status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from forwarder_worker.dispatch.backfill import Backfiller, BackfillRefused, Window
from forwarder_worker.dispatch.dispatcher import Dispatcher, Firing, Overrides
from forwarder_worker.names import LOCAL_UID_PREFIX
from forwarder_worker.runs.records import RunLog
from forwarder_worker.schedules.files import (
    FileError,
    is_scheduled_task,
    read_documents,
    schedule_files,
)
from forwarder_worker.schedules.model import InvalidSpec
from forwarder_worker.schedules.reconcile import describe, validate
from forwarder_worker.schedules.status import ready_condition, runs_status
from forwarder_worker.schedules.store import Entry, ScheduleStore

from forwarder_api.errors import Conflict, Invalid, NotFound, Unavailable
from forwarder_api.schedules import (
    NOT_PAUSED,
    BackfillAsked,
    KnownTasks,
    Resumed,
    ScheduleView,
    Triggered,
    check_identity,
    merge_patch,
    new_document,
    validate_spec,
)

log = logging.getLogger("forwarder.api")


def _not_loaded(namespace: str, name: str) -> Conflict:
    """409 for a file whose schedule the folder source has not put in Redis."""
    return Conflict(
        f"ScheduledTask {namespace}/{name} is not loaded into the scheduler yet "
        "(an invalid spec, or the folder source has not applied it); see its status"
    )


@dataclass(frozen=True)
class _Found:
    """A ScheduledTask document, the file it is in, and that file's other documents."""

    namespace: str
    name: str
    document: dict[str, Any]
    path: Path
    documents: list[Any]
    index: int


def file_name(namespace: str, name: str) -> str:
    """Where a new schedule is written: ``<name>.yaml`` in ``default``, else
    ``<namespace>.<name>.yaml`` (a namespace holds no dot, so the split is unambiguous)."""
    return f"{name}.yaml" if namespace == "default" else f"{namespace}.{name}.yaml"


class LocalSchedules:
    """The ScheduleBackend of local mode."""

    def __init__(
        self,
        folder: Path | None,
        store: ScheduleStore,
        runs: RunLog,
        dispatcher: Dispatcher,
        known_tasks: KnownTasks,
        backfiller: Backfiller,
    ) -> None:
        self._folder = folder
        self.store = store
        self.runs = runs
        self.dispatcher = dispatcher
        self.backfiller = backfiller
        self.known_tasks = known_tasks
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path:
        """The schedules folder, or 503 if none is configured."""
        if self._folder is None:
            raise Unavailable(
                "no schedules folder is configured (set FORWARDER_SCHEDULES_DIR, or "
                "FORWARDER_SCHEDULES_MODE=kubernetes in a cluster)"
            )
        return self._folder

    # -- reading the folder -------------------------------------------------------------------

    def _scan(self) -> dict[tuple[str, str], _Found]:
        """Every ScheduledTask in the folder; like the folder source, the first file (by name)
        that declares a namespace/name wins."""
        found: dict[tuple[str, str], _Found] = {}
        if not self.folder.is_dir():
            return found
        for path in schedule_files(self.folder):
            try:
                documents = read_documents(path)
            except (OSError, FileError) as exc:
                log.info("schedules: skipping unreadable %s: %s", path.name, exc)
                continue
            for index, doc in enumerate(documents):
                if not is_scheduled_task(doc):
                    continue
                namespace = str(doc["metadata"].get("namespace") or "default")
                key = (namespace, doc["metadata"]["name"])
                found.setdefault(key, _Found(*key, doc, path, documents, index))
        return found

    def _find(self, namespace: str, name: str) -> _Found:
        check_identity(namespace, name)
        found = self._scan().get((namespace, name))
        if found is None:
            raise NotFound(f"ScheduledTask {namespace}/{name} not found in {self.folder}")
        return found

    def _status(self, found: _Found) -> dict[str, Any]:
        entry_name = f"{found.namespace}/{found.name}"
        stored = self.store.get(entry_name)
        status: dict[str, Any] = {"nextRunTime": None}
        try:
            spec = validate(
                found.document.get("spec"), self.known_tasks(), allow_past_at=stored is not None
            )
        except InvalidSpec as exc:
            reason = "UnknownTask" if "is not a registered task" in str(exc) else "InvalidSpec"
            status["conditions"] = [
                ready_condition(False, reason, str(exc), None, None, time.time())
            ]
            return status
        # In words, as the operator writes it into a resource's status (printer columns).
        status["schedule"] = spec.schedule.describe()
        if stored is None:
            condition = ready_condition(
                False,
                "Pending",
                "the folder source has not applied it yet",
                None,
                None,
                time.time(),
            )
        else:
            expected = Entry.from_spec(
                entry_name, spec, uid=stored.entry.uid, generation=stored.entry.generation
            )
            if expected != stored.entry:
                condition = ready_condition(
                    False,
                    "Pending",
                    "the file changed; the folder source has not applied it yet",
                    None,
                    None,
                    time.time(),
                )
            else:
                result = describe(spec, stored.entry, stored.due, self.store)
                condition = ready_condition(
                    result.ready, result.reason, result.message, None, None, time.time()
                )
        status["conditions"] = [condition]
        status.update(runs_status(self.runs.summary(entry_name, spec.run_history_limit), stored))
        return status

    def _view(self, found: _Found) -> ScheduleView:
        meta = found.document["metadata"]
        spec = found.document.get("spec")
        return ScheduleView(
            namespace=found.namespace,
            name=found.name,
            spec=spec if isinstance(spec, dict) else {},
            status=self._status(found),
            uid=f"{LOCAL_UID_PREFIX}{found.namespace}/{found.name}",
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            file=found.path.name,
        )

    # -- writing files ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """503 with the reason when the folder cannot be written (a read-only mount, a
        folder owned by another user, a full disk): the api's configuration is at fault,
        not the request, and nothing was changed."""
        try:
            yield
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise Unavailable(
                f"cannot write the schedules folder {self.folder}: {reason} "
                f"({exc.filename or self.folder}); the api needs write access to it"
            ) from exc

    def _write(self, path: Path, documents: list[Any]) -> None:
        """Replace ``path`` atomically; the temp file's name is one the folder source skips."""
        text = yaml.safe_dump_all(documents, sort_keys=False, allow_unicode=True)
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (renamed, not closed in a with)
            "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        )
        try:
            with handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(handle.name)
            raise

    # -- ScheduleBackend ----------------------------------------------------------------------

    def list(self, namespace: str | None) -> list[ScheduleView]:
        return [
            self._view(found)
            for key, found in sorted(self._scan().items())
            if namespace is None or key[0] == namespace
        ]

    def get(self, namespace: str, name: str) -> ScheduleView:
        return self._view(self._find(namespace, name))

    def create(
        self,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        labels: dict[str, str],
        annotations: dict[str, str],
    ) -> ScheduleView:
        document = new_document(namespace, name, spec, labels, annotations, self.known_tasks())
        with self._lock:
            existing = self._scan().get((namespace, name))
            if existing is not None:
                raise Conflict(
                    f"ScheduledTask {namespace}/{name} already exists (in {existing.path.name})"
                )
            path = self.folder / file_name(namespace, name)
            if path.exists():
                raise Conflict(f"{path.name} already exists and declares other schedules")
            with self._writing():
                self.folder.mkdir(parents=True, exist_ok=True)
                self._write(path, [document])
        return self.get(namespace, name)

    def patch(self, namespace: str, name: str, spec_patch: dict[str, Any]) -> ScheduleView:
        with self._lock:
            found = self._find(namespace, name)
            spec = merge_patch(found.document.get("spec"), spec_patch)
            # A one-off that already fired may keep its past `at` (as the operator allows).
            validate_spec(
                spec,
                self.known_tasks(),
                allow_past_at=self.store.get(f"{namespace}/{name}") is not None,
            )
            documents = list(found.documents)
            documents[found.index] = {**found.document, "spec": spec}
            with self._writing():
                self._write(found.path, documents)
        return self.get(namespace, name)

    def delete(self, namespace: str, name: str) -> None:
        with self._lock:
            found = self._find(namespace, name)
            rest = [d for i, d in enumerate(found.documents) if i != found.index]
            with self._writing():
                if any(d is not None for d in rest):
                    self._write(found.path, rest)
                else:
                    found.path.unlink()

    def trigger(self, namespace: str, name: str, overrides: Overrides | None) -> Triggered:
        self._find(namespace, name)
        stored = self.store.get(f"{namespace}/{name}")
        if stored is None:
            raise _not_loaded(namespace, name)
        firing = Firing(stored.entry, time.time(), "trigger", overrides)
        (outcome,) = self.dispatcher.fire([firing])
        if not outcome.sent:
            raise Conflict(f"not triggered: {outcome.reason}")
        return Triggered(namespace, name, run_id=outcome.run_id)

    def resume(self, namespace: str, name: str) -> Resumed:
        self._find(namespace, name)
        if not self.store.resume(f"{namespace}/{name}"):
            raise Conflict(f"ScheduledTask {namespace}/{name} {NOT_PAUSED}")
        return Resumed(namespace, name, resumed=True)

    def backfill(self, namespace: str, name: str, window: Window) -> BackfillAsked:
        self._find(namespace, name)
        try:
            done = self.backfiller.run(f"{namespace}/{name}", window)
        except BackfillRefused as exc:
            raise Invalid(str(exc)) from None
        except LookupError:
            raise _not_loaded(namespace, name) from None
        return BackfillAsked(namespace, name, window, len(done.slots), done=done)
