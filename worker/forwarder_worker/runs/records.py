"""Run records: one Redis hash per run, plus capped per-schedule and global histories.

Celery's result backend answers "what is the state of id X" but not "what ran for schedule
Y", "how many runs failed" or "was id X ever submitted". Run records answer those. They are
written by whoever creates a run (beat, the api, a trigger) and then by worker signals
(received, started, succeeded, failed, retried, revoked), always through :class:`RunLog`.
The operator reads them into status and the api into history.

Keys under the prefix: ``run:<id>`` (hash, expires with results), ``runs`` (global zset of
ids by creation time), ``runs:s:<schedule>`` (per-schedule zset), ``runs:stats:<schedule>``
(counters and last times), ``runs:active:<schedule>`` (runs not yet final, for
concurrencyPolicy) and ``runs:changed`` (schedules whose records changed since the operator
last looked, so its status loop touches only those).

A run that reaches a final state is announced on the pub/sub channel named like its hash,
``run:<id>``, so a client waiting for it (the api's long poll) is woken at once instead of
polling. The payload is the final record, the hash's fields as a JSON object (bounded, as
every field stored is: results, errors and arguments are cut to ``result_limit``, tracebacks
to 8,000 characters), so the waiter answers without reading the hash again; records
announced by older versions carried only the state (:func:`announced_record` tells).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "SKIPPED"})
STATES = ("PENDING", "RECEIVED", "STARTED", "RETRY", *sorted(FINAL_STATES))

# Create-or-update a run in one atomic step. A final state is never overwritten by a late
# non-final signal, and RECEIVED never overwrites STARTED (signals from the main process and
# the pool child can arrive out of order). Reaching a final state is published on the run's
# key, for the API's long poll. A Lua function, so beat's claim script (schedules/store.py)
# writes run records with the same code in the same round trip as its claims.
# key: run hash, gkey: global zset, ckey: changed set; fields: a field -> value table.
TRANSITION_FUNCTION = """
local function transition(key, gkey, ckey, prefix, id, state, now, ttl, gcap, scap, fields)
  local old = redis.call('HGET', key, 'state')
  local final = {SUCCESS=true, FAILURE=true, REVOKED=true, SKIPPED=true}
  if old and final[old] and not final[state] then return old end
  if old == 'STARTED' and state == 'RECEIVED' then state = old end
  if not old then
    redis.call('HSET', key, 'id', id, 'created', now)
    redis.call('ZADD', gkey, now, id)
    redis.call('ZREMRANGEBYRANK', gkey, 0, -gcap - 1)
  end
  for k, v in pairs(fields) do
    if v ~= '' then redis.call('HSET', key, k, v) end
  end
  redis.call('HSET', key, 'state', state, 'updated', now)
  redis.call('EXPIRE', key, ttl)
  local schedule = redis.call('HGET', key, 'schedule')
  if schedule and schedule ~= '' then
    local skey = prefix .. 'runs:s:' .. schedule
    if not old then
      redis.call('ZADD', skey, now, id)
      redis.call('ZREMRANGEBYRANK', skey, 0, -scap - 1)
    end
    local stats = prefix .. 'runs:stats:' .. schedule
    local active = prefix .. 'runs:active:' .. schedule
    if final[state] then
      redis.call('SREM', active, id)
      if old ~= state then
        if state ~= 'SKIPPED' then redis.call('HINCRBY', stats, 'total', 1) end
        redis.call('HINCRBY', stats, string.lower(state), 1)
        if state == 'SUCCESS' then redis.call('HSET', stats, 'last_success', now) end
      end
    else
      redis.call('SADD', active, id)
    end
    if fields['slot'] and fields['slot'] ~= '' then
      redis.call('HSET', stats, 'last_schedule', fields['slot'])
    end
    redis.call('SADD', ckey, schedule)
  end
  if final[state] and old ~= state then
    -- The final record itself, so a waiter needs no read of its own (bounded: every
    -- stored field is).
    local flat = redis.call('HGETALL', key)
    local record = {}
    for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
    redis.call('PUBLISH', key, cjson.encode(record))
  end
  return state
end
"""

# KEYS: run hash, global zset, changed set.  ARGV: prefix, id, state, now, ttl, global cap,
# per-schedule cap, then field/value pairs.
TRANSITION_SCRIPT = (
    TRANSITION_FUNCTION
    + """
local fields = {}
for i = 8, #ARGV, 2 do fields[ARGV[i]] = ARGV[i + 1] end
return transition(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
  tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), fields)
"""
)


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
    active: list[str] = field(default_factory=list)


def bounded(value: Any, limit: int) -> str:
    """``value`` as JSON text of at most ``limit`` characters (longer ones end in ``…``)."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RunLog:
    """Writes and reads run records under one key prefix."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "forwarder:",
        *,
        ttl: int = 7 * 24 * 3600,
        global_limit: int = 10000,
        schedule_limit: int = 100,
        result_limit: int = 2048,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self.global_limit = global_limit
        self.schedule_limit = schedule_limit
        self.result_limit = result_limit
        self.global_key = f"{prefix}runs"
        self.changed_key = f"{prefix}runs:changed"
        self._transition = client.register_script(TRANSITION_SCRIPT)

    def key(self, run_id: str) -> str:
        """The hash key of run ``run_id``; also the pub/sub channel announcing its end."""
        return f"{self.prefix}run:{run_id}"

    # -- writes ---------------------------------------------------------------------------

    def transition(
        self,
        run_id: str,
        state: str,
        *,
        at: float | None = None,
        client: Any = None,
        **fields: Any,
    ) -> Any:
        """Record that run ``run_id`` reached ``state``, with extra ``fields``.

        Fields set to None are left as they were. Pass a pipeline as ``client`` to batch.
        """
        keys, args = self.transition_call(run_id, state, at=at, **fields)
        return self._transition(keys=keys, args=args, client=client or self.client)

    def transition_call(
        self, run_id: str, state: str, *, at: float | None = None, **fields: Any
    ) -> tuple[list[str], list[Any]]:
        """The KEYS and ARGV of :meth:`transition`'s script (``TRANSITION_FUNCTION``'s
        parameters in order, then the field/value pairs), for callers that run the
        transition inside their own script (the api's submit)."""
        now = time.time() if at is None else at
        args: list[Any] = [
            self.prefix,
            run_id,
            state,
            repr(now),
            self.ttl,
            self.global_limit,
            self.schedule_limit,
        ]
        args += self.record_fields(**fields)
        return [self.key(run_id), self.global_key, self.changed_key], args

    def record_fields(self, **fields: Any) -> list[str]:
        """``fields`` as the flat field/value list the transition script takes (None left out),
        for callers that write records inside their own script (beat's claim)."""
        out: list[str] = []
        for name, value in fields.items():
            if value is not None:
                out += [name, value if isinstance(value, str) else repr(value)]
        return out

    def queued_fields(
        self,
        task: str,
        *,
        source: str,
        schedule: str | None = None,
        slot: float | None = None,
        args: Any = None,
        kwargs: Any = None,
        expires: float | None = None,
    ) -> list[str]:
        """The fields :meth:`queued` writes, as a flat list (beat's claim script writes them)."""
        return self.record_fields(
            **self._queued(task, source, schedule, slot, args, kwargs, expires)
        )

    def _queued(
        self,
        task: str,
        source: str,
        schedule: str | None,
        slot: float | None,
        args: Any,
        kwargs: Any,
        expires: float | None,
    ) -> dict[str, Any]:
        """A queued (PENDING) run's record fields, its args and kwargs bounded."""
        return {
            "task": task,
            "source": source,
            "schedule": schedule,
            "slot": slot,
            "expires": expires,
            "args": None if args is None else bounded(args, self.result_limit),
            "kwargs": None if kwargs is None else bounded(kwargs, self.result_limit),
        }

    def queued_call(
        self,
        run_id: str,
        task: str,
        *,
        source: str,
        args: Any = None,
        kwargs: Any = None,
        expires: float | None = None,
    ) -> tuple[list[str], list[Any]]:
        """:meth:`transition_call` of what :meth:`queued` writes (no schedule, as the api's
        submissions have none)."""
        fields = self._queued(task, source, None, None, args, kwargs, expires)
        return self.transition_call(run_id, "PENDING", **fields)

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
        expires: float | None = None,
        client: Any = None,
    ) -> Any:
        """Record a run as it is sent (state PENDING), before any worker sees it; ``expires``
        is when an unstarted run stops counting as active (epoch seconds)."""
        fields = self._queued(task, source, schedule, slot, args, kwargs, expires)
        return self.transition(run_id, "PENDING", client=client, **fields)

    def skipped(
        self,
        run_id: str,
        task: str,
        *,
        schedule: str,
        slot: float,
        reason: str,
        client: Any = None,
    ) -> Any:
        """Record a firing that was not run (concurrencyPolicy Forbid, a missed deadline)."""
        fields = self._skipped(task, schedule, slot, reason)
        return self.transition(run_id, "SKIPPED", client=client, **fields)

    def skipped_fields(self, task: str, *, schedule: str, slot: float, reason: str) -> list[str]:
        """The fields :meth:`skipped` writes, as a flat list (beat's claim script writes them)."""
        return self.record_fields(**self._skipped(task, schedule, slot, reason))

    @staticmethod
    def _skipped(task: str, schedule: str, slot: float, reason: str) -> dict[str, Any]:
        """The fields of a skipped firing's record."""
        return {
            "task": task,
            "source": "schedule",
            "schedule": schedule,
            "slot": slot,
            "reason": reason,
            "finished": time.time(),
        }

    # -- reads ----------------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord | None:
        """Run ``run_id``, or None if it was never recorded (or has expired)."""
        data = self.client.hgetall(self.key(run_id))
        return RunRecord.from_hash(data) if data else None

    def _records(self, ids: Iterable[str]) -> list[RunRecord]:
        ids = list(ids)
        with self.client.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hgetall(self.key(run_id))
            return [RunRecord.from_hash(d) for d in pipe.execute() if d]

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
        key = f"{self.prefix}runs:s:{schedule}" if schedule else self.global_key
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
            for record in self._records(fresh):
                if (task and record.task != task) or (state and record.state != state):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                wanted.append(record)
                if len(wanted) == limit:
                    break
        return wanted

    def active(self, schedule: str) -> list[str]:
        """Ids of the schedule's runs that have not ended."""
        return sorted(self.client.smembers(f"{self.prefix}runs:active:{schedule}"))

    def summary(self, schedule: str, limit: int = 10) -> ScheduleRuns:
        """Last run, recent runs and counters of a schedule."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zrevrange(f"{self.prefix}runs:s:{schedule}", 0, limit - 1)
            pipe.hgetall(f"{self.prefix}runs:stats:{schedule}")
            pipe.smembers(f"{self.prefix}runs:active:{schedule}")
            ids, stats, active = pipe.execute()
        recent = self._records(ids)

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
            active=sorted(active),
        )

    def take_changed(self) -> set[str]:
        """Schedules whose records changed since the last call (atomically emptied)."""
        with self.client.pipeline() as pipe:
            pipe.smembers(self.changed_key)
            pipe.delete(self.changed_key)
            changed, _ = pipe.execute()
        return set(changed)

    def forget_schedule(self, schedule: str) -> None:
        """Drop a deleted schedule's history, counters and active set."""
        self.client.delete(
            f"{self.prefix}runs:s:{schedule}",
            f"{self.prefix}runs:stats:{schedule}",
            f"{self.prefix}runs:active:{schedule}",
        )
