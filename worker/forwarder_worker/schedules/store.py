"""The schedule store: the one module that reads and writes schedule keys in Redis.

It keeps celery-redbeat's storage model (design.rst in redbeat): one hash per entry holding a
JSON ``definition`` and a JSON ``meta``, and one sorted set (``<prefix>:schedule``) scored by
each entry's next due time, so beat finds due work with one ZRANGEBYSCORE. What it changes:

* Every hash also holds ``rev``, bumped on each definition write. Beat claims a slot with a
  Lua compare-and-set on ``rev`` and the due score, so a concurrent update, suspend or delete
  always wins over a firing in flight, and no slot is claimed twice (the per-slot mark). The
  claim writes the slot's run record and puts its message on its queue in the same script.
  Writers compare-and-set too (one read, then one script that writes only if the hash and
  due score are still as read), so an update never overwrites a firing that happened since.
* A suspended or finished entry leaves the due set (redbeat keeps disabled entries there and
  re-reads them every tick). ``<prefix>:entries`` indexes all entries for listing.
* Every change pushes to ``<prefix>:wake``; beat blocks on that list instead of sleeping, so a
  change is armed at once without fast polling.
* Entries carry the owning resource's uid and generation: an older generation never
  overwrites a newer one, and orphans can be found.

Entry names are ``<namespace>/<name>``. Namespaces cannot contain ``:`` or ``/``, so these keys
never collide with the ``<prefix>:...`` bookkeeping keys or with run records.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import redis

from forwarder_worker.names import ENTRY_NAME
from forwarder_worker.runs.records import TRANSITION_FUNCTION
from forwarder_worker.schedules.model import ScheduledTaskSpec
from forwarder_worker.schedules.timing import (
    CronTimetable,
    IntervalTimetable,
    OneOffTimetable,
    Timetable,
)

# Claim due slots: advance an entry only if nobody rewrote its definition (rev) and nobody
# claimed this slot already (its due score is still the one we read). Two beats that both
# read the same slot (a stale holder and its successor) can therefore never both fire it.
# The run record of each won slot is written in the same script, and so is its Celery
# message (LPUSH on its queue), so a slot this beat won is recorded and on its queue or
# neither, whenever beat dies or Redis goes away; a record never waits for a message that
# was never sent. The earliest due time after the claims is returned last, so beat needs
# no separate read for it.
# KEYS: due set, global runs zset, runs:changed.  ARGV: run prefix, now, ttl, global cap,
# per-schedule cap, count, then per entry: hash key, rev, due score read, new meta, new due
# ('' leaves the due set), run id ('' claims only), run state, field count, field/value pairs,
# push count, (list key, payload) pairs.
_CLAIM_AND_RECORD = (
    TRANSITION_FUNCTION
    + """
local out, i = {}, 7
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local gcap, scap = tonumber(ARGV[4]), tonumber(ARGV[5])
for n = 1, tonumber(ARGV[6]) do
  local key, rev, due, meta, nxt = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local id, state, nf = ARGV[i + 5], ARGV[i + 6], tonumber(ARGV[i + 7])
  local fields = {}
  for j = 0, nf - 1 do fields[ARGV[i + 8 + 2 * j]] = ARGV[i + 9 + 2 * j] end
  i = i + 8 + 2 * nf
  local pushes, np = i + 1, tonumber(ARGV[i])
  i = i + 1 + 2 * np
  out[n] = 0
  if redis.call('HGET', key, 'rev') == rev then
    local score = redis.call('ZSCORE', KEYS[1], key)
    if score and tonumber(score) == tonumber(due) then
      out[n] = 1
      redis.call('HSET', key, 'meta', meta)
      if nxt == '' then
        redis.call('ZREM', KEYS[1], key)
      else
        redis.call('ZADD', KEYS[1], nxt, key)
      end
      if id ~= '' then
        transition(ARGV[1] .. 'run:' .. id, KEYS[2], KEYS[3], ARGV[1], id, state, now, ttl,
          gcap, scap, fields)
      end
      for j = 0, np - 1 do
        redis.call('LPUSH', ARGV[pushes + 2 * j], ARGV[pushes + 1 + 2 * j])
      end
    end
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
out[#out + 1] = first[2] or ''
return out
"""
)

# Write an entry if its hash and due score are still what the writer read (compare-and-set;
# WATCH/MULTI did the same in four round trips), bump rev, index it and wake beat.
# KEYS: entry hash, due set, index set, wake list.  ARGV: definition, meta, rev and due score
# as read ('' for absent), new definition, new meta, new rev, new due ('' leaves the due
# set), entry name. Returns 1 if written, 0 if the entry changed meanwhile.
_UPSERT = """
local h = redis.call('HMGET', KEYS[1], 'definition', 'meta', 'rev')
if (h[1] or '') ~= ARGV[1] or (h[2] or '') ~= ARGV[2] or (h[3] or '') ~= ARGV[3] then
  return 0
end
local due = redis.call('ZSCORE', KEYS[2], KEYS[1])
if ARGV[4] == '' then
  if due then return 0 end
elseif not due or tonumber(due) ~= tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', KEYS[1], 'definition', ARGV[5], 'meta', ARGV[6], 'rev', ARGV[7])
if ARGV[8] == '' then
  redis.call('ZREM', KEYS[2], KEYS[1])
else
  redis.call('ZADD', KEYS[2], ARGV[8], KEYS[1])
end
redis.call('SADD', KEYS[3], ARGV[9])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 0)
return 1
"""

# Beat's read: every entry due at ARGV[1] (at most ARGV[2]) with its hash fields and score,
# and the earliest due score overall, in one round trip; beat's deferred metrics (ARGV[3..],
# field/increment pairs, on hash KEYS[2]) ride along. More than ARGV[2] due: only a count, and
# beat reads the backlog in fair batches (ScheduleStore.due).
_READ_DUE = """
for i = 3, #ARGV, 2 do
  if string.find(ARGV[i], 'lateness_sum', 1, true) then
    redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1])
  else
    redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[2]) + 1)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #due > 2 * tonumber(ARGV[2]) then return {1, first[2] or ''} end
local out = {0, first[2] or ''}
for j = 1, #due, 2 do
  local h = redis.call('HMGET', due[j], 'definition', 'meta', 'rev')
  out[#out + 1] = due[j]
  out[#out + 1] = due[j + 1]
  out[#out + 1] = h[1] or ''
  out[#out + 1] = h[2] or ''
  out[#out + 1] = h[3] or ''
end
return out
"""

# How much earlier than asked a blocking wait returns, to absorb Redis's timeout granularity.
_TIMEOUT_SLACK = 0.11


def fair_share(items: list[str], limit: int, *, key: Callable[[str], str]) -> list[str]:
    """``limit`` of ``items`` (ordered earliest due first), taken round-robin across the groups
    that ``key`` names: the first of each group, then the second of each, and so on. Groups
    take turns in the order their first item appears, so the earliest due group goes first."""
    groups: dict[str, list[str]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    picked: list[str] = []
    depth = 0
    while len(picked) < limit:
        row = [group[depth] for group in groups.values() if depth < len(group)]
        if not row:
            break
        picked.extend(row[: limit - len(picked)])
        depth += 1
    return picked


class UpsertResult(enum.Enum):
    """What an upsert did."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    STALE = "stale"  # an older generation of the same resource: ignored


class StaleWrite(RuntimeError):
    """Raised by callers that treat a stale generation as an error."""


@dataclass(frozen=True)
class Entry:
    """A schedule entry as stored: the spec flattened to what beat needs, plus its owner."""

    name: str
    task: str
    schedule: dict[str, Any]  # {"every": seconds} | {"cron": expr} | {"at": epoch}
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    tz: str = "UTC"
    suspend: bool = False
    deadline: int | None = None
    policy: str = "Allow"
    jitter: int = 0
    queue: str = "default"
    priority: int | None = None
    history: int = 10
    uid: str = ""
    generation: int = 0

    @classmethod
    def from_spec(
        cls, name: str, spec: ScheduledTaskSpec, *, uid: str = "", generation: int = 0
    ) -> Entry:
        """Flatten a validated spec into an entry named ``<namespace>/<name>``."""
        if not ENTRY_NAME.match(name):
            raise ValueError(f"entry name {name!r} is not '<namespace>/<name>'")
        sched = spec.schedule
        if sched.every is not None:
            schedule: dict[str, Any] = {"every": int(sched.every)}
        elif sched.cron is not None:
            schedule = {"cron": sched.cron}
        else:
            assert sched.at is not None
            schedule = {"at": sched.at.timestamp()}
        return cls(
            name=name,
            task=spec.task,
            schedule=schedule,
            args=list(spec.args),
            kwargs=dict(spec.kwargs),
            tz=spec.time_zone,
            suspend=spec.suspend,
            deadline=spec.starting_deadline_seconds,
            policy=spec.concurrency_policy,
            jitter=spec.jitter_seconds,
            queue=spec.queue,
            priority=spec.priority,
            history=spec.run_history_limit,
            uid=uid,
            generation=generation,
        )

    def to_json(self) -> str:
        """Canonical JSON: equal entries give equal strings, which makes upsert idempotent."""
        # vars(): the fields are plain JSON values, so asdict()'s recursive copy is not needed.
        return json.dumps(vars(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Entry:
        """Read an entry written by :meth:`to_json`. Fields this version does not know (an
        entry written by a newer one during a rolling upgrade) are ignored, not fatal."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})

    @property
    def namespace(self) -> str:
        """The namespace part of the name."""
        return self.name.partition("/")[0]

    def timetable(self, anchor: float) -> Timetable:
        """When the entry fires; ``anchor`` is the first slot of an interval."""
        if "every" in self.schedule:
            return IntervalTimetable(float(self.schedule["every"]), anchor)
        if "cron" in self.schedule:
            return CronTimetable(self.schedule["cron"], self.tz)
        return OneOffTimetable(float(self.schedule["at"]))

    def same_timing(self, other: Entry) -> bool:
        """Whether both fire at the same instants (then a rewrite keeps the next due time)."""
        return self.schedule == other.schedule and self.tz == other.tz


@dataclass(frozen=True)
class Meta:
    """Mutable firing state of an entry, kept apart from its definition (redbeat's ``meta``)."""

    anchor: float  # first slot of an interval grid
    last: float | None = None  # slot of the last firing
    count: int = 0  # firings so far
    done: bool = False  # a one-off that has fired

    def to_json(self) -> str:
        """Compact JSON for the ``meta`` hash field."""
        return json.dumps(vars(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None, *, default_anchor: float) -> Meta:
        """Read ``meta``; a missing one is a fresh entry anchored at ``default_anchor``."""
        if not text:
            return cls(anchor=default_anchor)
        return cls(**json.loads(text))


@dataclass(frozen=True)
class RunWrite:
    """A run record to write with a claim, only if the claim wins (see ScheduleStore.claim)."""

    run_id: str
    state: str  # PENDING (to be sent) or SKIPPED
    fields: list[str]  # flat field/value pairs, as RunLog.record_fields builds them


@dataclass(frozen=True)
class StoredEntry:
    """An entry read back with its firing state and next due time (None: not in the due set)."""

    entry: Entry
    meta: Meta
    rev: str
    due: float | None


@dataclass(frozen=True)
class Snapshot:
    """An entry's hash fields and due score exactly as read (None: absent), for a
    compare-and-set write (:meth:`ScheduleStore.upsert`)."""

    definition: str | None
    meta: str | None
    rev: str | None
    due: float | None

    def stored(self) -> StoredEntry | None:
        """The entry this snapshot shows, or None when there is none."""
        if not self.definition:
            return None
        anchor = float(self.due) if self.due is not None else time.time()
        return StoredEntry(
            Entry.from_json(self.definition),
            Meta.from_json(self.meta, default_anchor=anchor),
            self.rev or "0",
            self.due,
        )


class ScheduleStore:
    """Reads and writes schedule entries under one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str = "forwarder:") -> None:
        self.client = client
        self.prefix = prefix
        self.due_key = f"{prefix}:schedule"
        self.index_key = f"{prefix}:entries"
        self.wake_key = f"{prefix}:wake"
        self._claim = client.register_script(_CLAIM_AND_RECORD)
        self._upsert = client.register_script(_UPSERT)
        self._read_due = client.register_script(_READ_DUE)

    def key(self, name: str) -> str:
        """The hash key of entry ``name``."""
        return f"{self.prefix}{name}"

    def name_of(self, key: str) -> str:
        """The entry name of hash ``key``."""
        return key.removeprefix(self.prefix)

    # -- writes ---------------------------------------------------------------------------

    def upsert(
        self, entry: Entry, *, now: float | None = None, current: Snapshot | None = None
    ) -> tuple[UpsertResult, float | None]:
        """Create or update ``entry``; returns what happened and the next due time.

        The same entry twice changes nothing, not even the next due time. A change of timing
        re-arms from now; a change of anything else keeps the due time. Resuming re-arms from
        now too, so missed slots are not fired in a burst.

        ``current`` is the entry's hash as the caller read it (:meth:`snapshot`), which saves
        a read. The write is a compare-and-set: it lands only if the hash and due score are
        still what the decision was made from, and otherwise the entry is read again and the
        decision remade, so a firing or another writer in between is never overwritten.
        """
        key = self.key(entry.name)
        new_json = entry.to_json()
        seen = current if current is not None else self.snapshot(entry.name)
        while True:
            at = time.time() if now is None else now
            stored = seen.stored()
            if (
                stored is not None
                and stored.entry.uid == entry.uid
                and stored.entry.generation > entry.generation
            ):
                return UpsertResult.STALE, seen.due
            if seen.definition == new_json:
                return UpsertResult.UNCHANGED, seen.due
            keep = stored is not None and stored.entry.uid == entry.uid
            meta = Meta.from_json(seen.meta if keep else None, default_anchor=at)
            meta, due = self._arm(
                entry,
                stored.entry if keep and stored is not None else None,
                meta,
                seen.due if keep else None,
                at,
            )
            written = self._upsert(
                keys=[key, self.due_key, self.index_key, self.wake_key],
                args=[
                    seen.definition or "",
                    seen.meta or "",
                    seen.rev or "",
                    "" if seen.due is None else repr(seen.due),
                    new_json,
                    meta.to_json(),
                    int(seen.rev or 0) + 1,
                    "" if due is None else repr(due),
                    entry.name,
                ],
            )
            if written:
                return (UpsertResult.UPDATED if stored else UpsertResult.CREATED), due
            seen = self.snapshot(entry.name)

    @staticmethod
    def _arm(
        entry: Entry, current: Entry | None, meta: Meta, due: float | None, now: float
    ) -> tuple[Meta, float | None]:
        """The firing state and due time for ``entry`` replacing ``current``."""
        if entry.suspend or meta.done:
            return meta, None
        resumed = current is not None and current.suspend
        if current is not None and not resumed and current.same_timing(entry) and due is not None:
            return meta, due
        if "every" in entry.schedule:
            every = float(entry.schedule["every"])
            if meta.last is None and not resumed:
                # A new interval fires at once, like Celery's; later slots follow its grid.
                return replace(meta, anchor=now), now
            # Changed or resumed: keep the rhythm from the last firing, never a catch-up burst.
            anchor = meta.last if meta.last is not None else meta.anchor
            nxt = anchor + every
            if nxt <= now:
                nxt = IntervalTimetable(every, anchor).next_after(now)
            return replace(meta, anchor=anchor), nxt
        if "at" in entry.schedule and not resumed:
            # A one-off that has not fired is due at its time, even if that passed while it was
            # being written (validated in the future, stored a moment later): beat then fires it
            # once, if still within its starting deadline, instead of it silently never firing.
            return meta, float(entry.schedule["at"])
        return meta, entry.timetable(meta.anchor).next_after(now)

    def delete(self, name: str) -> bool:
        """Remove entry ``name``; True if it existed."""
        key = self.key(name)
        with self.client.pipeline() as pipe:
            pipe.delete(key)
            pipe.zrem(self.due_key, key)
            pipe.srem(self.index_key, name)
            self._wake(pipe)
            existed, *_ = pipe.execute()
        return bool(existed)

    def set_suspended(self, name: str, suspend: bool) -> tuple[UpsertResult, float | None]:
        """Suspend (leave the due set) or resume (re-arm from now) entry ``name``."""
        snapshot = self.snapshot(name)
        stored = snapshot.stored()
        if stored is None:
            raise KeyError(f"schedule entry {name!r} does not exist")
        return self.upsert(replace(stored.entry, suspend=suspend), current=snapshot)

    def suspend(self, name: str) -> None:
        """Take ``name`` out of the due set; its definition stays."""
        self.set_suspended(name, True)

    def resume(self, name: str) -> float | None:
        """Put ``name`` back in the due set from now on; returns its next due time."""
        return self.set_suspended(name, False)[1]

    def _wake(self, pipe: redis.client.Pipeline) -> None:
        # One pending wake is enough; the list never grows past one element.
        pipe.lpush(self.wake_key, "1")
        pipe.ltrim(self.wake_key, 0, 0)

    # -- reads ----------------------------------------------------------------------------

    def get(self, name: str) -> StoredEntry | None:
        """Entry ``name`` with its firing state, or None."""
        return self.snapshot(name).stored()

    def snapshot(self, name: str) -> Snapshot:
        """Entry ``name``'s hash fields and due score as stored, in one round trip."""
        return self._snapshots([name])[0]

    def names(self) -> set[str]:
        """Every entry name, suspended and finished ones included."""
        return set(self.client.smembers(self.index_key))

    def entries(self) -> list[StoredEntry]:
        """Every entry, ordered by name."""
        return sorted(self._load(sorted(self.names())), key=lambda s: s.entry.name)

    def _load(self, names: Iterable[str]) -> Iterator[StoredEntry]:
        for snapshot in self._snapshots(names):
            stored = snapshot.stored()
            if stored is not None:
                yield stored

    def _snapshots(self, names: Iterable[str]) -> list[Snapshot]:
        """The snapshots of ``names``, in order, in one round trip."""
        names = list(names)
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(self.key(name), "definition", "meta", "rev")
                pipe.zscore(self.due_key, self.key(name))
            replies = pipe.execute()
        snapshots = []
        for i in range(0, len(replies), 2):
            (definition, meta, rev), due = replies[i], replies[i + 1]
            snapshots.append(Snapshot(definition, meta, rev, due))
        return snapshots

    # -- beat's side ----------------------------------------------------------------------

    def due(self, now: float, limit: int, *, window: int | None = None) -> list[StoredEntry]:
        """Up to ``limit`` entries due at ``now``, loaded in one round trip.

        Without ``window`` they are the earliest due. With a ``window``, the candidates are the
        ``window`` earliest due plus the ``limit`` latest due (those that just fell due behind
        a backlog), and ``limit`` of them are taken round-robin across namespaces, earliest
        first within each (see :func:`fair_share`). So a burst in one namespace delays another
        namespace's entry by one batch, not by the rest of the burst.
        """
        if window is None:
            keys = self.client.zrangebyscore(self.due_key, "-inf", now, start=0, num=limit)
        else:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(self.due_key, "-inf", now, start=0, num=max(window, limit))
                pipe.zrevrangebyscore(self.due_key, now, "-inf", start=0, num=limit)
                earliest, latest = pipe.execute()
            seen = set(earliest)
            # The latest due all score after the earliest window, so appending them in
            # ascending order keeps the candidates ordered by due time.
            keys = earliest + [k for k in reversed(latest) if k not in seen]
            if len(keys) > limit:
                keys = fair_share(keys, limit, key=lambda k: self.name_of(k).partition("/")[0])
        if not keys:
            return []
        loaded = {s.entry.name: s for s in self._load(self.name_of(k) for k in keys)}
        missing = [k for k in keys if self.name_of(k) not in loaded]
        if missing:
            # A due-set member without its hash (deleted mid-read): drop it, as redbeat does.
            self.client.zrem(self.due_key, *missing)
        return [loaded[self.name_of(k)] for k in keys if self.name_of(k) in loaded]

    def next_due(self) -> float | None:
        """When the earliest entry is due, or None if the due set is empty."""
        first = self.client.zrange(self.due_key, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def read_due(
        self, now: float, limit: int, *, metrics_key: str = "", metrics: Iterable[Any] = ()
    ) -> tuple[list[StoredEntry] | None, float | None]:
        """Every entry due at ``now`` (loaded) and the earliest due time, in one round trip
        (one Lua call, no separate load or next-due read). None instead of the list when
        more than ``limit`` are due: read those in fair batches with :meth:`due`.

        ``metrics`` (field, increment) pairs are added to hash ``metrics_key`` in the same
        call, so beat's counters cost no round trip of their own.
        """
        args: list[Any] = [repr(now), limit]
        for name, value in metrics:
            args += [name, value]
        reply = self._read_due(keys=[self.due_key, metrics_key or self.due_key], args=args)
        backlog, first = int(reply[0]), float(reply[1]) if reply[1] != "" else None
        if backlog:
            return None, first
        loaded, missing = [], []
        for j in range(2, len(reply), 5):
            key, score, definition, meta, rev = reply[j : j + 5]
            if not definition:
                missing.append(key)
                continue
            due = float(score)
            loaded.append(
                StoredEntry(
                    Entry.from_json(definition),
                    Meta.from_json(meta, default_anchor=due),
                    rev or "0",
                    due,
                )
            )
        if missing:
            # A due-set member without its hash (deleted mid-read): drop it, as redbeat does.
            self.client.zrem(self.due_key, *missing)
        return loaded, first

    def claim(
        self,
        updates: Iterable[tuple[StoredEntry, Meta, float | None]],
        records: Iterable[RunWrite | None] | None = None,
        runs: Any = None,
    ) -> list[bool]:
        """Claim each entry's due slot and store its new state and due time (None: leave the
        due set). One round trip (one Lua call); True where the claim won and the slot may
        fire. See :meth:`claim_and_record`."""
        return self.claim_and_record(updates, records, runs)[0]

    def claim_and_record(
        self,
        updates: Iterable[tuple[StoredEntry, Meta, float | None]],
        records: Iterable[RunWrite | None] | None = None,
        runs: Any = None,
        pushes: Iterable[Sequence[tuple[str, str]] | None] | None = None,
    ) -> tuple[list[bool], float | None]:
        """:meth:`claim`, writing ``records[i]`` (a run record, through ``runs``' transition
        rules) and LPUSHing ``pushes[i]`` (list key, payload pairs: a message on its queue)
        where claim ``i`` wins, in the same atomic script; also returns the earliest due time
        after the claims (None: the due set is empty)."""
        updates = list(updates)
        writes = list(records) if records is not None else [None] * len(updates)
        messages = list(pushes) if pushes is not None else [None] * len(updates)
        args: list[Any] = [
            getattr(runs, "prefix", self.prefix),
            repr(time.time()),
            getattr(runs, "ttl", 0),
            getattr(runs, "global_limit", 0),
            getattr(runs, "schedule_limit", 0),
            len(updates),
        ]
        for (stored, meta, due), write, push in zip(updates, writes, messages, strict=True):
            assert stored.due is not None
            args += [
                self.key(stored.entry.name),
                stored.rev,
                repr(stored.due),
                meta.to_json(),
                "" if due is None else repr(due),
            ]
            if write is None:
                args += ["", "", 0]
            else:
                args += [write.run_id, write.state, len(write.fields) // 2, *write.fields]
            args.append(len(push) if push else 0)
            for key, payload in push or ():
                args += [key, payload]
        reply = self._claim(
            keys=[
                self.due_key,
                getattr(runs, "global_key", f"{self.prefix}runs"),
                getattr(runs, "changed_key", f"{self.prefix}runs:changed"),
            ],
            args=args,
        )
        first = reply[-1]
        return [bool(r) for r in reply[:-1]], float(first) if first != "" else None

    def wait_for_change(self, timeout: float, client: redis.Redis | None = None) -> bool:
        """Block until the store changes or ``timeout`` seconds pass; True if woken."""
        if timeout <= 0:
            return False
        deadline = time.monotonic() + timeout
        # Redis expires blocking timeouts on its `hz` clock (10/s by default), so a BLPOP can
        # overshoot by ~100 ms. Block for all but the last slice, then sleep that slice here:
        # firings stay on time, and a change arriving in the slice waits at most that long.
        coarse = timeout - _TIMEOUT_SLACK
        if coarse >= 0.01 and (client or self.client).blpop([self.wake_key], timeout=coarse):
            return True
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        return False
