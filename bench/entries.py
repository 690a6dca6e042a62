"""Writing the same schedule entries into Forwarder's store and into redbeat's.

Both get one interval entry per index ``i`` running ``bench.noop(i)`` (or a realistic
``forwarder.http`` entry for the memory figure), first due at ``due(i)``. Forwarder's go
through ``ScheduleStore.upsert`` and redbeat's through ``RedBeatSchedulerEntry.save``: each
the way its own users write entries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import Celery
from celery.schedules import schedule
from forwarder_worker import Core, Settings
from forwarder_worker._redis.scripts import Scripts
from forwarder_worker.schedules.store import Entry, ScheduleStore, Snapshot
from harness import ANCHOR_PREFIX, PREFIX
from redbeat.schedulers import RedBeatSchedulerEntry
from redbeat_compat import create_redbeat_app

NOOP = "bench.noop"
# Entries written per pipeline by load_ours.
LOAD_PIPELINE = 1000
HTTP_KWARGS = {"url": "http://exporter.mlops:9100/metrics", "method": "GET"}


def entry_name(i: int) -> str:
    """Forwarder's ``<namespace>/<name>`` and redbeat's entry name for index ``i``."""
    return f"bench/entry-{i}"


def index_of(argsrepr: str) -> int:
    """The entry index a ``bench.noop`` message carries in its args."""
    match = re.search(r"-?\d+", argsrepr)
    if match is None:
        raise ValueError(f"no entry index in args {argsrepr!r}")
    return int(match.group())


def ours_entry(i: int, every: int, realistic: bool = False) -> Entry:
    if realistic:
        return Entry(
            name=entry_name(i), task="forwarder.http", schedule={"every": every}, kwargs=HTTP_KWARGS
        )
    return Entry(name=entry_name(i), task=NOOP, schedule={"every": every}, args=[i])


def load_ours(
    redis_url: str,
    indexes: range,
    every: int,
    due: Callable[[int], float] | None = None,
    realistic: bool = False,
) -> None:
    """Upsert one entry per index, first due at ``due(i)`` (now when None), into an empty
    store: ``ScheduleStore.upsert`` itself, given the empty snapshot a new entry has (so it
    reads nothing), on a pipeline of LOAD_PIPELINE writes (100,000 entries in seconds, not
    one round trip each). Each write is still the store's compare-and-set script."""
    core = Core.from_settings(Settings(redis_url=redis_url, key_prefix=PREFIX))
    new = Snapshot(None, None, None, None)
    try:
        for start in range(0, len(indexes), LOAD_PIPELINE):
            with core.client.pipeline(transaction=False) as pipe:
                store = ScheduleStore(pipe, core.keys, Scripts(pipe, core.keys, core.limits))
                for i in indexes[start : start + LOAD_PIPELINE]:
                    store.upsert(
                        ours_entry(i, every, realistic),
                        now=None if due is None else due(i),
                        current=new,
                    )
                if not all(pipe.execute()):
                    raise RuntimeError("an entry existed already: load_ours writes new ones")
    finally:
        core.close()


def anchor_app(redis_url: str) -> Celery:
    """A redbeat-configured app on ``redis_url`` for writing entries from the harness."""
    return create_redbeat_app(Settings(redis_url=redis_url))


def redbeat_entry(app: Celery, i: int, every: int, realistic: bool = False) -> Any:
    run_every = schedule(run_every=timedelta(seconds=every), app=app)
    if realistic:
        return RedBeatSchedulerEntry(
            entry_name(i), "forwarder.http", run_every, kwargs=HTTP_KWARGS, app=app
        )
    return RedBeatSchedulerEntry(entry_name(i), NOOP, run_every, args=[i], app=app)


def load_redbeat(
    app: Celery,
    indexes: range,
    every: int,
    due: Callable[[int], float] | None = None,
    realistic: bool = False,
) -> None:
    """Save one redbeat entry per index; with ``due``, first due at ``due(i)``.

    redbeat has no "first due at" field: an interval entry is due ``every`` seconds after
    ``last_run_at``, so that is set to ``due(i) - every``. ``save()`` scores such an entry
    from the current time, not from its due time, so the due-set score is then set to what a
    firing would have written: the due time truncated to whole seconds (redbeat's
    ``to_timestamp``). Due times should be whole seconds for redbeat to see them on time.
    """
    client = redis.Redis.from_url(app.conf.redbeat_redis_url)
    try:
        for i in indexes:
            entry = redbeat_entry(app, i, every, realistic)
            if due is not None:
                entry.last_run_at = datetime.fromtimestamp(due(i) - every, UTC)
            entry.save()
            if due is not None:
                client.zadd(f"{ANCHOR_PREFIX}:schedule", {entry.key: math.floor(due(i))})
    finally:
        client.close()


def arm_ours(store: ScheduleStore, i: int, every: int) -> None:
    """Write a new entry that is due at once (a new interval fires on creation)."""
    store.upsert(ours_entry(i, every))


def arm_redbeat(app: Celery, i: int, every: int) -> None:
    """Save a new redbeat entry that is due at once: its last run one interval ago.

    (A fresh ``RedBeatSchedulerEntry`` counts its creation as its last run, so it would
    first fire ``every`` seconds later; redbeat's users set ``last_run_at`` for "now".)
    """
    entry = redbeat_entry(app, i, every)
    entry.last_run_at = datetime.now(UTC) - timedelta(seconds=every)
    entry.save()
