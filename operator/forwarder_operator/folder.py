"""Local mode's schedule source: ScheduledTask YAML files in a folder, applied like kubectl.

``forwarder up`` runs this instead of the kopf operator when there is no cluster. Every
``*.yaml``/``*.yml`` file may hold one or more ScheduledTask documents (the same ones
``kubectl apply -f`` takes). Adding or changing a file applies its schedules through
:func:`forwarder_worker.schedules.reconcile.apply_schedule`, the operator's own path;
deleting a file removes them. A file that cannot be read or is invalid is reported with its
path and reason and skipped, and the schedules it declared before stay as they were (nothing
is lost to a half-saved edit). A full pass also runs periodically, which re-creates entries
lost from Redis (a flush or restart). Files are read as the api reads them
(:mod:`forwarder_worker.schedules.files`, with its size and UTF-8 limits).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import watchfiles
from forwarder_worker import Core, get_settings
from forwarder_worker.names import LOCAL_UID_PREFIX
from forwarder_worker.schedules.files import Declared, FileError, declared, schedule_files
from forwarder_worker.schedules.reconcile import apply_schedule
from forwarder_worker.schedules.store import ScheduleStore

log = logging.getLogger("forwarder.folder")

RESYNC_SECONDS = 10.0


@dataclass
class FolderSource:
    """Reconciles the schedules declared in ``folder`` into ``store``."""

    folder: Path
    store: ScheduleStore
    known_tasks: Collection[str] | None = None
    # What each readable file declared last time: kept while a file is broken.
    _by_file: dict[Path, list[Declared]] = field(default_factory=dict)
    # The last message reported per file or entry, so a steady state logs nothing.
    _reported: dict[str, str] = field(default_factory=dict)

    def _report(
        self, key: str, message: str, level: int = logging.INFO, *, state: str = ""
    ) -> None:
        """Log ``message`` when ``key``'s state (the message unless given) changes."""
        state = state or message
        if self._reported.get(key) != state:
            self._reported[key] = state
            log.log(level, "%s", message)

    def sync(self) -> dict[str, str]:
        """One full pass; returns each applied entry's reason (Scheduled, InvalidSpec, ...)."""
        present = schedule_files(self.folder) if self.folder.is_dir() else []
        for gone in set(self._by_file) - set(present):
            del self._by_file[gone]
            self._reported.pop(str(gone), None)
        for path in present:
            try:
                self._by_file[path] = declared(path)
                self._reported.pop(str(path), None)
            except (FileError, OSError) as exc:
                self._report(str(path), f"{path.name}: skipped: {exc}", logging.ERROR)
        outcome: dict[str, str] = {}
        owner: dict[str, Path] = {}
        for item in (d for path in sorted(self._by_file) for d in self._by_file[path]):
            if item.entry_name in owner:
                self._report(
                    f"dup:{item.path}:{item.entry_name}",
                    f"{item.path.name}: skipped {item.entry_name}: already declared in "
                    f"{owner[item.entry_name].name}",
                    logging.ERROR,
                )
                continue
            owner[item.entry_name] = item.path
            result = apply_schedule(
                self.store,
                item.namespace,
                item.name,
                item.spec,
                uid=f"{LOCAL_UID_PREFIX}{item.entry_name}",
                known_tasks=self.known_tasks,
            )
            outcome[item.entry_name] = result.reason
            level = logging.INFO if result.ready else logging.ERROR
            # The next run time in the message moves with every firing; report real changes.
            state = result.entry.to_json() if result.entry else result.message
            self._report(
                item.entry_name,
                f"{item.path.name}: {item.entry_name}: {result.reason}: {result.message}",
                level,
                state=f"{result.reason}:{state}",
            )
        for name in self._owned_entries() - set(owner):
            self.store.delete(name)
            self._reported.pop(name, None)
            log.info("removed %s: its file is gone", name)
        return outcome

    def _owned_entries(self) -> set[str]:
        stored = (self.store.get(name) for name in self.store.names())
        return {s.entry.name for s in stored if s and s.entry.uid.startswith(LOCAL_UID_PREFIX)}

    def run(self, stop: threading.Event) -> None:
        """Sync now, then on every change in the folder and every RESYNC_SECONDS."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._safe_sync()
        for _changes in watchfiles.watch(
            self.folder,
            debounce=100,
            step=20,
            stop_event=stop,
            yield_on_timeout=True,
            rust_timeout=int(RESYNC_SECONDS * 1000),
            recursive=False,
            raise_interrupt=False,
        ):
            self._safe_sync()

    def _safe_sync(self) -> None:
        try:
            self.sync()
        except redis.RedisError as exc:
            # Redis restarting: the next change or resync pass catches up.
            self._report("redis", f"Redis unavailable ({exc}); will retry", logging.WARNING)
        else:
            self._reported.pop("redis", None)


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m forwarder_operator.folder --dir DIR``: run the folder source."""
    parser = argparse.ArgumentParser(prog="forwarder-folder", description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="folder of ScheduledTask YAML")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    core = Core.from_settings(get_settings())
    source = FolderSource(args.dir, core.store, known_tasks=core.registered_task_names())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("watching %s for ScheduledTask files", args.dir)
    source.run(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
