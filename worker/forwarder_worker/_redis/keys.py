"""Every Redis key Forwarder writes, named in one place (celery's own keys aside).

All keys live under one prefix (``FORWARDER_KEY_PREFIX``, ``forwarder:`` by default), so
several installs can share a Redis. With the default prefix:

======================================  =========================================================
``forwarder:<namespace>/<name>``        a schedule entry (hash: ``definition``, ``meta``, ``rev``;
                                        ``paused``: suspended after that many failed runs)
``forwarder::schedule``                 entries by next due time (zset; suspended ones absent)
``forwarder::entries``                  every entry's name (set), for listing
``forwarder::wake``                     beat's wake-up list (at most one element)
``forwarder::lock``                     the lock of the beat that fires
``forwarder::metrics``                  the scheduler's counters (hash)
``forwarder::durations``                run durations by task: ``<task> le_<bound>`` bucket
                                        counts and ``<task> sum_us`` (hash; at most
                                        ``duration_task_limit`` tasks)
``forwarder::workers``                  workers alive: hostname scored by its last heartbeat
                                        (zset; a worker drops itself as it stops, and each
                                        heartbeat prunes the dead)
``forwarder::run-now``                  the last run-now value handled, per entry (hash)
``forwarder::resume``                   the last resume value handled, per entry (hash)
``forwarder::backfill``                 the last backfill annotation value handled, per entry
                                        (hash)
``forwarder:backfilled:<schedule>``     a schedule's backfilled slots (zset scored by slot;
                                        trimmed to ``result_expires`` and
                                        ``BACKFILL_MEMORY_SLOTS``, and expiring)
``forwarder:run:<id>``                  one run's record (hash, expiring ``result_expires``
                                        after its last change; also the channel announcing
                                        its end)
``forwarder:runs``                      every run by creation time (zset, capped, and ids
                                        older than ``result_expires`` dropped)
``forwarder:runs:changed``              schedules whose runs changed since the operator looked
                                        (set; only schedules whose entry exists)
``forwarder:runs:s:<schedule>``         a schedule's runs by creation time (zset, capped and
                                        trimmed like ``runs``; expiring)
``forwarder:runs:stats:<schedule>``     a schedule's counters, last times and the lateness of
                                        its last firing (hash)
``forwarder:runs:active:<schedule>``    a schedule's runs that have not ended (set; expiring)
``forwarder:history:exported``          runs and Flower tasks exported to files (zset)
``forwarder:history:lock``              the lock of the export running
======================================  =========================================================

Every key named after a schedule is written only while its entry exists (the run transition
checks) and removed with it (``ScheduleStore.delete``). The limits are in docs/reliability.md
("Bounded storage").

Entry names are ``<namespace>/<name>``; a namespace holds neither ``:`` nor ``/``, so an
entry's key never collides with the ``<prefix>:...`` bookkeeping keys or the run keys. The
double colon of the bookkeeping keys is celery-redbeat's naming, kept from the first version.
The scripts (:mod:`forwarder_worker._redis.scripts`) derive run keys in Lua from the prefix
and the same constants as :class:`Keys`.
"""

from __future__ import annotations

import re

DUE = ":schedule"
METRICS = ":metrics"
DURATIONS = ":durations"
RUN = "run:"
SCHEDULE_RUNS = "runs:s:"
SCHEDULE_STATS = "runs:stats:"
ACTIVE_RUNS = "runs:active:"
BACKFILLED = "backfilled:"


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern (a key prefix may hold ``*`` etc.)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class Keys:
    """The names of Forwarder's keys under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.due = f"{prefix}{DUE}"
        self.index = f"{prefix}:entries"
        self.wake = f"{prefix}:wake"
        self.lock = f"{prefix}:lock"
        self.metrics = f"{prefix}{METRICS}"
        self.durations = f"{prefix}{DURATIONS}"
        self.workers = f"{prefix}:workers"
        self.run_now = f"{prefix}:run-now"
        self.resume = f"{prefix}:resume"
        self.backfill = f"{prefix}:backfill"
        self.runs = f"{prefix}runs"
        self.changed = f"{prefix}runs:changed"
        self.run_channels = glob_escape(self.run("")) + "*"
        """A pattern matching every run's channel (the api's long poll subscribes to it)."""
        self.exported = f"{prefix}history:exported"
        self.history_lock = f"{prefix}history:lock"

    def entry(self, name: str) -> str:
        """The hash of schedule entry ``name``."""
        return f"{self.prefix}{name}"

    def entry_name(self, key: str) -> str:
        """The entry name of hash ``key``."""
        return key.removeprefix(self.prefix)

    def run(self, run_id: str) -> str:
        """The hash of run ``run_id``; also the pub/sub channel that announces its end."""
        return f"{self.prefix}{RUN}{run_id}"

    def schedule_runs(self, schedule: str) -> str:
        """A schedule's runs by creation time."""
        return f"{self.prefix}{SCHEDULE_RUNS}{schedule}"

    def schedule_stats(self, schedule: str) -> str:
        """A schedule's counters and last times."""
        return f"{self.prefix}{SCHEDULE_STATS}{schedule}"

    def active_runs(self, schedule: str) -> str:
        """A schedule's runs that have not ended."""
        return f"{self.prefix}{ACTIVE_RUNS}{schedule}"

    def backfilled(self, schedule: str) -> str:
        """A schedule's backfilled slots (zset: member and score the slot)."""
        return f"{self.prefix}{BACKFILLED}{schedule}"
