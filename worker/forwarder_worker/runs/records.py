"""Run records: one Redis hash per run, plus capped per-schedule and global histories.

Celery's result backend answers "what is the state of id X" but not "what ran for schedule
Y", "how many runs failed" or "was id X ever submitted". Run records answer those. They are
written by whoever creates a run (beat, the api, a trigger) and then by worker signals
(received, started, succeeded, failed, retried, revoked), always through :class:`RunLog`.
The operator reads them into status and the api into history.

Keys under the prefix (named in :mod:`forwarder_worker._redis.keys`): ``run:<id>`` (hash,
expires with results), ``runs`` (global zset of ids by creation time), ``runs:s:<schedule>``
(per-schedule zset), ``runs:stats:<schedule>`` (counters and last times),
``runs:active:<schedule>`` (runs not yet final, for concurrencyPolicy) and ``runs:changed``
(schedules whose records changed since the operator last looked, so its status loop touches
only those). Every write is one transition script (:mod:`forwarder_worker._redis.scripts`),
whoever writes it, and it keeps every one of these bounded (docs/reliability.md, "Bounded
storage"): records expire, histories are capped and trimmed by age, and a schedule's keys are
written only while its entry exists, so a run that ends after its schedule was deleted brings
none back (the store's delete removes them).

A run that reaches a final state is announced on the pub/sub channel named like its hash,
``run:<id>``, so a client waiting for it (the api's long poll) is woken at once instead of
polling. The payload is the final record, the hash's fields as a JSON object (bounded, as
every field stored is: results, errors and arguments are cut to ``result_limit``, tracebacks
to 8,000 characters), so the waiter answers without reading the hash again; records
announced by older versions carried only the state (:func:`announced_record` tells).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
import redis.asyncio

from forwarder_worker._redis.keys import Keys
from forwarder_worker._redis.scripts import SUBMIT_COMMANDS as SUBMIT_COMMANDS
from forwarder_worker._redis.scripts import AsyncScripts, Scripts
from forwarder_worker._redis.scripts import RunWrite as RunWrite

FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "SKIPPED"})
STATES = ("PENDING", "RECEIVED", "STARTED", "RETRY", *sorted(FINAL_STATES))


@dataclass(frozen=True)
class RunRecord:
    """One run as recorded."""

    id: str
    task: str
    state: str
    schedule: str | None = None
    slot: float | None = None
    source: str | None = None
    created: float | None = None
    received: float | None = None
    started: float | None = None
    finished: float | None = None
    result: str | None = None
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    reason: str | None = None
    retries: int = 0
    worker: str | None = None
    args: str | None = None
    kwargs: str | None = None
    overrides: str | None = None  # a run-now's own args/kwargs (JSON), as asked
    attempts: str | None = None  # JSON array of the ended attempts of a run that retried
    retry_at: float | None = None  # when a retrying run's next attempt is due

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> RunRecord:
        """Read a ``run:<id>`` hash."""

        def num(name: str) -> float | None:
            value = data.get(name)
            return float(value) if value else None

        return cls(
            id=data["id"],
            task=data.get("task", ""),
            state=data.get("state", "PENDING"),
            schedule=data.get("schedule") or None,
            slot=num("slot"),
            source=data.get("source") or None,
            created=num("created"),
            received=num("received"),
            started=num("started"),
            finished=num("finished"),
            result=data.get("result"),
            error_type=data.get("error_type"),
            error=data.get("error"),
            traceback=data.get("traceback"),
            reason=data.get("reason"),
            retries=int(data.get("retries") or 0),
            worker=data.get("worker"),
            args=data.get("args"),
            kwargs=data.get("kwargs"),
            overrides=data.get("overrides"),
            attempts=data.get("attempts"),
            retry_at=num("retry_at"),
        )

    @property
    def final(self) -> bool:
        """Whether the run has ended."""
        return self.state in FINAL_STATES


def announced_record(payload: str) -> RunRecord | None:
    """The final record a run's announcement carries, or None if the payload is not one (an
    older writer's bare state): the caller then reads the record."""
    if not payload.startswith("{"):
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict) or "id" not in data:
        return None
    return RunRecord.from_hash({str(k): str(v) for k, v in data.items()})


@dataclass(frozen=True)
class ScheduleRuns:
    """What the operator puts in a ScheduledTask's status."""

    last_run: RunRecord | None
    recent: list[RunRecord]
    total: int
    succeeded: int
    failed: int
    skipped: int
    last_schedule_time: float | None
    last_successful_time: float | None
    consecutive_failures: int = 0
    last_failure_time: float | None = None
    skipped_overlap: int = 0  # the skipped ones concurrencyPolicy skipped


class ScheduleStats(NamedTuple):
    """A schedule's counters and last times as its stats hash holds them (the metrics' view,
    read for every schedule at once by :meth:`RunLog.stats`)."""

    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    consecutive_failures: int = 0
    last_success: float | None = None
    last_schedule: float | None = None
    last_lateness: float | None = None  # of its last firing from beat (seconds after the slot)


# The stats hash's field of each ScheduleStats field, in order.
_STATS_FIELDS = (
    "success",
    "failure",
    "skipped",
    "consecutive_failures",
    "last_success",
    "last_schedule",
    "last_lateness",
)


def bounded(value: Any, limit: int) -> str:
    """``value`` as JSON text of at most ``limit`` characters (longer ones end in ``…``)."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ActiveRun(NamedTuple):
    """A run its schedule still counts as active, as its record shows it (None: gone)."""

    id: str
    state: str | None
    expires: float | None
    started: float | None
    retry_at: float | None = None


class RunLog:
    """Writes and reads run records under one key prefix."""

    def __init__(
        self, client: redis.Redis, keys: Keys, scripts: Scripts, *, result_limit: int = 2048
    ) -> None:
        self.client = client
        self.keys = keys
        self.scripts = scripts
        self.result_limit = result_limit
        # Runs whose SUCCESS a worker's result backend wrote in the result's own round trip
        # (recording.result_backend); the task_success receiver asks, and writes nothing.
        self._with_result: set[str] = set()
        # STARTED transitions left for the result backend to write with Celery's STARTED
        # state, in its round trip (recording.signals defers them), by run id.
        self._deferred: dict[str, RunWrite] = {}
        # Transitions kept to be written together, in one round trip (:meth:`pend`), by run
        # id, in the order kept.
        self._pending: dict[str, RunWrite] = {}
        self._lock = threading.Lock()

    # -- writes ---------------------------------------------------------------------------

    def transition(self, run_id: str, state: str, *, client: Any = None, **fields: Any) -> Any:
        """Record that run ``run_id`` reached ``state``, with extra ``fields``.

        Fields set to None are left as they were. Pass a pipeline as ``client`` to batch. A
        transition of the run kept in this process (:meth:`pend`, :meth:`defer`) and not
        written yet is written first.
        """
        if self._pending:
            with self._lock:
                pending = self._pending.pop(run_id, None)
            if pending is not None:
                self.write(pending, client=client)
        deferred = self.take_deferred(run_id)
        if deferred is not None:
            self.write(deferred, client=client)
        return self.write(self.build(run_id, state, **fields), client=client)

    def build(self, run_id: str, state: str, **fields: Any) -> RunWrite:
        """The transition of run ``run_id`` to ``state`` with ``fields`` (None: left as they
        were), to write later."""
        return RunWrite(run_id, state, self._fields(**fields))

    def write(self, write: RunWrite, *, client: Any = None) -> Any:
        """Record a transition built ahead (:meth:`queued_write`, :meth:`skipped_write`)."""
        return self.scripts.transition(write, time.time(), client)

    def write_with_result(
        self,
        client: Any,
        key: str,
        value: str | bytes,
        expires: int | None,
        writes: Sequence[RunWrite],
    ) -> bool:
        """Store Celery's task state ``value`` at ``key`` with ``writes``, transitions of its
        run, in one atomic step on ``client`` (the result backend's); False when a SUCCESS was
        stored there already, and nothing was written (Celery's own rule)."""
        return self.scripts.store_result(client, key, value, expires, writes, time.time())

    def pend(self, write: RunWrite) -> bool:
        """Keep ``write`` for :meth:`flush`, which writes every one kept in one round trip;
        True when none was kept before it (the caller then arranges the flush). The run's
        next :meth:`transition` in this process writes it first if it is still kept."""
        with self._lock:
            first = not self._pending
            self._pending[write.run_id] = write
        return first

    def flush(self) -> int:
        """Write the transitions kept by :meth:`pend`, in one round trip; how many. Raises
        the first error once all were sent (those that failed are not kept again)."""
        if not self._pending:
            return 0
        with self._lock:
            writes = list(self._pending.values())
            self._pending.clear()
        replies = self.scripts.transitions(writes, time.time())
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return len(writes)

    def defer(self, write: RunWrite) -> None:
        """Keep ``write`` for the result backend to send with the state Celery stores next for
        its run, in the same round trip (:meth:`take_deferred`); if nothing takes it, the
        run's next :meth:`transition` in this process writes it first."""
        with self._lock:
            self._deferred[write.run_id] = write

    def take_deferred(self, run_id: str) -> RunWrite | None:
        """Run ``run_id``'s deferred transition (:meth:`defer`), now the caller's to write."""
        if not self._deferred:
            return None
        with self._lock:
            return self._deferred.pop(run_id, None)

    @staticmethod
    def _fields(**fields: Any) -> list[str]:
        """``fields`` as the flat field/value list the transition script takes (None left out)."""
        out: list[str] = []
        for name, value in fields.items():
            if value is not None:
                out += [name, value if isinstance(value, str) else repr(value)]
        return out

    def queued_write(
        self,
        run_id: str,
        task: str,
        *,
        source: str,
        schedule: str | None = None,
        slot: float | None = None,
        args: Any = None,
        kwargs: Any = None,
        overrides: Any = None,
        expires: float | None = None,
    ) -> RunWrite:
        """A run recorded as it is sent (state PENDING), before any worker sees it, for a
        script that writes it with its message (beat's claim, the api's submit); ``expires``
        is when an unstarted run stops counting as active (epoch seconds), ``overrides`` a
        run-now's own arguments as it gave them (``args`` and ``kwargs`` are the run's)."""
        return RunWrite(
            run_id,
            "PENDING",
            self._fields(
                task=task,
                source=source,
                schedule=schedule,
                slot=slot,
                expires=expires,
                args=None if args is None else bounded(args, self.result_limit),
                kwargs=None if kwargs is None else bounded(kwargs, self.result_limit),
                overrides=None if overrides is None else bounded(overrides, self.result_limit),
            ),
        )

    def queued(
        self,
        run_id: str,
        task: str,
        *,
        source: str,
        schedule: str | None = None,
        slot: float | None = None,
        args: Any = None,
        kwargs: Any = None,
        overrides: Any = None,
        expires: float | None = None,
        client: Any = None,
    ) -> Any:
        """Record :meth:`queued_write`'s run now."""
        write = self.queued_write(
            run_id,
            task,
            source=source,
            schedule=schedule,
            slot=slot,
            args=args,
            kwargs=kwargs,
            overrides=overrides,
            expires=expires,
        )
        return self.write(write, client=client)

    def skipped_write(
        self, run_id: str, task: str, *, schedule: str, slot: float, reason: str
    ) -> RunWrite:
        """A firing that was not run (concurrencyPolicy Forbid, a missed deadline)."""
        fields = self._fields(
            task=task,
            source="schedule",
            schedule=schedule,
            slot=slot,
            reason=reason,
            finished=time.time(),
        )
        return RunWrite(run_id, "SKIPPED", fields)

    def success_write(self, run_id: str, task: str, result: Any) -> RunWrite:
        """Run ``run_id``'s SUCCESS with its ``result`` (bounded), for the result backend to
        write with the result (:meth:`write_with_result`); once it has landed, say so with
        :meth:`note_with_result`."""
        return self.build(
            run_id,
            "SUCCESS",
            task=task,
            finished=time.time(),
            result=bounded(result, self.result_limit),
        )

    def note_with_result(self, run_id: str) -> None:
        """Run ``run_id``'s SUCCESS was recorded with its result (:meth:`success_write`)."""
        with self._lock:
            self._with_result.add(run_id)

    def recorded_with_result(self, run_id: str) -> bool:
        """Whether run ``run_id``'s SUCCESS was recorded with its result in this process
        (asked once: the id is forgotten)."""
        with self._lock:
            if run_id in self._with_result:
                self._with_result.discard(run_id)
                return True
        return False

    # -- reads ----------------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord | None:
        """Run ``run_id``, or None if it was never recorded (or has expired)."""
        data = self.client.hgetall(self.keys.run(run_id))
        return RunRecord.from_hash(data) if data else None

    def records(self, ids: Iterable[str]) -> list[RunRecord]:
        """The records of ``ids`` that exist, in order, in one round trip."""
        ids = list(ids)
        with self.client.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hgetall(self.keys.run(run_id))
            return [RunRecord.from_hash(d) for d in pipe.execute() if d]

    def ids_since(self, since: float) -> list[str]:
        """Every run created since ``since`` (epoch seconds), oldest first."""
        return list(self.client.zrangebyscore(self.keys.runs, since, "+inf"))

    def recent(
        self,
        *,
        schedule: str | None = None,
        task: str | None = None,
        state: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Newest first, filtered by schedule, task and state, then paginated."""
        key = self.keys.schedule_runs(schedule) if schedule else self.keys.runs
        wanted: list[RunRecord] = []
        skipped, page, cursor = 0, max(limit, 50), 0
        # Pages are read by rank, and a run recorded between two reads shifts every older
        # one down a rank: the next page then starts with ids already read. Each is taken once.
        seen: set[str] = set()
        while len(wanted) < limit:
            ids = self.client.zrevrange(key, cursor, cursor + page - 1)
            if not ids:
                break
            cursor += len(ids)
            fresh = [run_id for run_id in ids if run_id not in seen]
            seen.update(fresh)
            for record in self.records(fresh):
                if (task and record.task != task) or (state and record.state != state):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                wanted.append(record)
                if len(wanted) == limit:
                    break
        return wanted

    def active(self, schedules: Sequence[str]) -> dict[str, list[ActiveRun]]:
        """Each schedule's runs that have not ended, with the state, expiry and start their
        records hold (for concurrencyPolicy), in two round trips."""
        keys = self.keys
        with self.client.pipeline(transaction=False) as pipe:
            for schedule in schedules:
                pipe.smembers(keys.active_runs(schedule))
            members = dict(zip(schedules, pipe.execute(), strict=True))
        ids = sorted({i for ms in members.values() for i in ms})
        with self.client.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hmget(keys.run(run_id), "state", "expires", "started", "retry_at")
            found = dict(zip(ids, pipe.execute(), strict=True))
        active: dict[str, list[ActiveRun]] = {}
        for schedule, ms in members.items():
            runs = []
            for run_id in sorted(ms):
                state, expires, started, retry_at = found[run_id]
                runs.append(
                    ActiveRun(
                        run_id,
                        state,
                        float(expires) if expires else None,
                        float(started) if started else None,
                        float(retry_at) if retry_at else None,
                    )
                )
            active[schedule] = runs
        return active

    def summary(self, schedule: str, limit: int = 10) -> ScheduleRuns:
        """Last run, recent runs and counters of a schedule."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zrevrange(self.keys.schedule_runs(schedule), 0, limit - 1)
            pipe.hgetall(self.keys.schedule_stats(schedule))
            ids, stats = pipe.execute()
        recent = self.records(ids)

        def num(name: str) -> float | None:
            return float(stats[name]) if stats.get(name) else None

        return ScheduleRuns(
            last_run=recent[0] if recent else None,
            recent=recent,
            total=int(stats.get("total", 0)),
            succeeded=int(stats.get("success", 0)),
            failed=int(stats.get("failure", 0)),
            skipped=int(stats.get("skipped", 0)),
            last_schedule_time=num("last_schedule"),
            last_successful_time=num("last_success"),
            consecutive_failures=int(stats.get("consecutive_failures", 0)),
            last_failure_time=num("last_failure"),
            skipped_overlap=int(stats.get("overlap", 0)),
        )

    def stats(self, schedules: Sequence[str]) -> list[ScheduleStats]:
        """The counters and last times of each of ``schedules``, in order, in one round trip."""
        with self.client.pipeline(transaction=False) as pipe:
            for schedule in schedules:
                pipe.hmget(self.keys.schedule_stats(schedule), _STATS_FIELDS)
            replies = pipe.execute()
        out = []
        for s, f, k, c, success, schedule, lateness in replies:
            out.append(
                ScheduleStats(
                    int(s or 0),
                    int(f or 0),
                    int(k or 0),
                    int(c or 0),
                    float(success) if success else None,
                    float(schedule) if schedule else None,
                    float(lateness) if lateness else None,
                )
            )
        return out

    def durations(self) -> dict[str, dict[str, float]]:
        """Run durations by task: task -> ``le_<bound>`` bucket counts (not cumulative) and
        ``sum``, as the run transition writes them (the count is the buckets' total)."""
        out: dict[str, dict[str, float]] = {}
        for name, value in self.client.hgetall(self.keys.durations).items():
            task, _, figure = name.rpartition(" ")
            if figure == "sum_us":
                figure, value = "sum", int(value) / 1e6
            out.setdefault(task, {})[figure] = float(value)
        return out

    def take_changed(self) -> set[str]:
        """Schedules whose records changed since the last call (atomically emptied)."""
        with self.client.pipeline() as pipe:
            pipe.smembers(self.keys.changed)
            pipe.delete(self.keys.changed)
            changed, _ = pipe.execute()
        return set(changed)


class AsyncRunLog:
    """Run records read and written from an event loop: the api reads a run, waits for its
    announcement and submits one without a thread hop."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, scripts: AsyncScripts) -> None:
        self.client = client
        self.keys = keys
        self.scripts = scripts

    def key(self, run_id: str) -> str:
        """The hash key of run ``run_id``; also the pub/sub channel announcing its end."""
        return self.keys.run(run_id)

    @property
    def channels(self) -> str:
        """A pattern matching every run's channel (a pattern subscription hears them all)."""
        return self.keys.run_channels

    async def get(self, run_id: str) -> RunRecord | None:
        """Run ``run_id``, or None if it was never recorded (or has expired)."""
        data = await self.client.hgetall(self.keys.run(run_id))
        return RunRecord.from_hash(data) if data else None

    async def submit(
        self, write: RunWrite, now: float, commands: Sequence[tuple[str, str, str]]
    ) -> bool:
        """Record a new run (:meth:`RunLog.queued_write`) and run its message's Redis
        ``commands`` ((command, key, payload), each command one of :data:`SUBMIT_COMMANDS`)
        in one atomic step; False if the run was recorded already, and nothing was done."""
        return await self.scripts.submit(write, now, commands)
