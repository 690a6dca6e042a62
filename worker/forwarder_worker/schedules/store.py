"""The schedule store: the one module that reads and writes schedule keys in Redis.

It keeps celery-redbeat's storage model (design.rst in redbeat): one hash per entry holding a
JSON ``definition`` and a JSON ``meta``, and one sorted set (``<prefix>:schedule``) scored by
each entry's next due time, so beat finds due work with one ZRANGEBYSCORE. What it changes:

* Every hash also holds ``rev``, bumped on each definition write (a new entry starts at the
  microseconds since the epoch, :func:`next_rev`, so a deleted and re-created entry never
  repeats a rev read before). Beat claims a slot with a
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

Key names and the scripts live in the core's Redis layer (:mod:`forwarder_worker._redis`);
this module decides what to write.
"""

from __future__ import annotations

import enum
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, cast

import redis

from forwarder_worker._redis.keys import Keys
from forwarder_worker._redis.scripts import BackfillSlot, Claim, DueEntry, Scripts
from forwarder_worker.names import ENTRY_NAME
from forwarder_worker.schedules.model import ScheduledTaskSpec
from forwarder_worker.schedules.timing import (
    BoundedTimetable,
    CronTimetable,
    Exclusions,
    IntervalTimetable,
    OneOffTimetable,
    Timetable,
    parse_dates,
)

# How much earlier than asked a blocking wait returns, to absorb Redis's timeout granularity.
TIMEOUT_SLACK = 0.11
# How often the end of an exact wait (its last TIMEOUT_SLACK) looks for a change, in seconds.
_SLICE_POLL = 0.01


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
    # -- runs: retries, time limit (issue 19, the runs side) --
    retries: dict[str, int] | None = None  # {"limit", "backoff", "maxBackoff"} (seconds)
    timeout: int | None = None  # timeoutSeconds
    suspend_after: int | None = None  # suspendAfterFailures (read by the run transition)
    # -- end of the runs block --
    history: int = 10
    uid: str = ""
    generation: int = 0
    # The window, the limit and the exclusions (None or empty: unbounded), as epoch seconds,
    # a count, cron expressions and ISO dates read in ``tz``.
    start: float | None = None
    end: float | None = None
    max_runs: int | None = None
    exclude_cron: list[str] = field(default_factory=list)
    exclude_dates: list[str] = field(default_factory=list)
    missed_policy: str = "Latest"  # Latest | All | Skip

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
            schedule = {"at": sched.one_off().timestamp()}
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
            retries=None if spec.retries is None else spec.retries.as_policy(),
            timeout=spec.timeout_seconds,
            suspend_after=spec.suspend_after_failures,
            history=spec.run_history_limit,
            uid=uid,
            generation=generation,
            start=None if spec.start_time is None else spec.start_time.timestamp(),
            end=None if spec.end_time is None else spec.end_time.timestamp(),
            max_runs=spec.max_runs,
            exclude_cron=list(spec.exclusions.cron) if spec.exclusions else [],
            exclude_dates=list(spec.exclusions.dates) if spec.exclusions else [],
            missed_policy=spec.missed_run_policy,
        )

    def to_json(self) -> str:
        """Canonical JSON: equal entries give equal strings, which makes upsert idempotent.

        Fields at their defaults are left out (:meth:`from_json` puts them back): most
        entries use few of the schedule's options, and writing every one of them made the
        definition 446 bytes where redbeat's is 243, in Redis's memory for every entry."""
        # vars(): the fields are plain JSON values, so asdict()'s recursive copy is not needed.
        data = {
            k: v
            for k, v in vars(self).items()
            if k not in _ENTRY_DEFAULTS or v != _ENTRY_DEFAULTS[k]
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Entry:
        """Read an entry written by :meth:`to_json`. Fields this version does not know (an
        entry written by a newer one during a rolling upgrade) are ignored, not fatal."""
        known = _ENTRY_FIELDS
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})

    @property
    def namespace(self) -> str:
        """The namespace part of the name."""
        return self.name.partition("/")[0]

    def timetable(self, anchor: float) -> BoundedTimetable:
        """When the entry fires (its window and exclusions applied; the run limit is
        counted by beat); ``anchor`` is the first slot of an interval."""
        base: Timetable
        if "every" in self.schedule:
            base = IntervalTimetable(float(self.schedule["every"]), anchor)
        elif "cron" in self.schedule:
            base = CronTimetable(self.schedule["cron"], self.tz)
        else:
            base = OneOffTimetable(float(self.schedule["at"]))
        exclusions = Exclusions(self.tz, tuple(self.exclude_cron), parse_dates(self.exclude_dates))
        return BoundedTimetable(base, self.start, self.end, exclusions or None)

    def same_timing(self, other: Entry) -> bool:
        """Whether both fire at the same instants (then a rewrite keeps the next due time)."""
        return (
            self.schedule == other.schedule
            and self.tz == other.tz
            and (self.start, self.end, self.max_runs) == (other.start, other.end, other.max_runs)
            and (self.exclude_cron, self.exclude_dates) == (other.exclude_cron, other.exclude_dates)
        )

    def limit_reached(self, meta: Meta) -> bool:
        """Whether the entry has fired ``max_runs`` times."""
        return self.max_runs is not None and meta.count >= self.max_runs


@dataclass(frozen=True)
class Meta:
    """Mutable firing state of an entry, kept apart from its definition (redbeat's ``meta``)."""

    anchor: float  # first slot of an interval grid
    last: float | None = None  # slot of the last firing
    count: int = 0  # firings so far
    done: bool = False  # no slot left: a one-off that has fired, a window over, maxRuns reached
    excluded: int = 0  # excluded slots beat stepped over (counted as it steps past them)
    missed: int = 0  # slots that passed unfired while beat was away, or past their deadline
    ended: float | None = None  # when beat found no slot left (the Completed condition's time)

    def to_json(self) -> str:
        """Compact JSON for the ``meta`` hash field."""
        return json.dumps(vars(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None, *, default_anchor: float) -> Meta:
        """Read ``meta``; a missing one is a fresh entry anchored at ``default_anchor``.
        Fields this version does not know (a newer writer's) are ignored, as in Entry."""
        if not text:
            return cls(anchor=default_anchor)
        known = _META_FIELDS
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


# The field names from_json keeps, worked out once (a scrape reads 10,000 entries).
_ENTRY_FIELDS = frozenset(f.name for f in fields(Entry))
# Each field's default, as Entry.to_json leaves it out.
_ENTRY_DEFAULTS: dict[str, Any] = {
    f.name: f.default if f.default is not MISSING else cast(Callable[[], Any], f.default_factory)()
    for f in fields(Entry)
    if f.default is not MISSING or f.default_factory is not MISSING
}
_META_FIELDS = frozenset(f.name for f in fields(Meta))


@dataclass(frozen=True)
class StoredEntry:
    """An entry read back with its firing state and next due time (None: not in the due set)."""

    entry: Entry
    meta: Meta
    rev: str
    due: float | None
    paused: int | None = None  # suspended after this many failed runs in a row

    def due_time(self) -> float:
        """The due time it was read with; ValueError if it was read outside the due set."""
        if self.due is None:
            raise ValueError(f"entry {self.entry.name!r} was not read from the due set")
        return self.due


@dataclass(frozen=True)
class Snapshot:
    """An entry's hash fields and due score exactly as read (None: absent), for a
    compare-and-set write (:meth:`ScheduleStore.upsert`)."""

    definition: str | None
    meta: str | None
    rev: str | None
    due: float | None
    paused: str | None = None

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
            int(self.paused) if self.paused else None,
        )


def arm(
    entry: Entry, current: Entry | None, meta: Meta, due: float | None, now: float
) -> tuple[Meta, float | None]:
    """The firing state and due time for ``entry`` replacing ``current`` (None: new) at
    ``now``; the due time is None when it leaves the due set (suspended or complete).

    A one-off that has fired stays complete whatever is re-applied. An entry completed by
    its window or its run limit stays complete while its timing (schedule, zone, window,
    limit, exclusions) is unchanged; a new timing that leaves slots to fire re-arms it.
    """
    if entry.suspend:
        return meta, None
    one_off = "at" in entry.schedule or (current is not None and "at" in current.schedule)
    if meta.done and (one_off or current is None or current.same_timing(entry)):
        return meta, None
    resumed = current is not None and current.suspend
    if current is not None and not resumed and current.same_timing(entry) and due is not None:
        return meta, due
    meta, nxt = _next_due(entry, meta, resumed, now)
    if nxt is None or entry.limit_reached(meta):
        return replace(meta, done=True, ended=meta.ended or now), None
    return replace(meta, done=False, ended=None), nxt


def _next_due(entry: Entry, meta: Meta, resumed: bool, now: float) -> tuple[Meta, float | None]:
    """The first due time of a new, changed or resumed entry (``arm``)."""
    if "every" in entry.schedule:
        if meta.last is None and not resumed:
            # A new interval fires at once, like Celery's (at its startTime if that is
            # later); later slots follow its grid.
            anchor = now if entry.start is None else max(now, entry.start)
            meta = replace(meta, anchor=anchor)
            return meta, entry.timetable(anchor).next_after(math.nextafter(anchor, -math.inf))
        # Changed or resumed: keep the rhythm from the last firing, never a catch-up burst.
        anchor = meta.last if meta.last is not None else meta.anchor
        timetable = entry.timetable(anchor)
        nxt = timetable.next_after(anchor)
        if nxt is not None and nxt <= now:
            nxt = timetable.next_after(now)
        return replace(meta, anchor=anchor), nxt
    if "at" in entry.schedule and not resumed:
        # A one-off that has not fired is due at its time, even if that passed while it was
        # being written (validated in the future, stored a moment later): beat then fires it
        # once, if still within its starting deadline, instead of it silently never firing.
        at = float(entry.schedule["at"])
        return meta, entry.timetable(meta.anchor).next_after(math.nextafter(at, -math.inf))
    return meta, entry.timetable(meta.anchor).next_after(now)


def next_rev(seen: str | None) -> int:
    """The rev written after ``seen``: one more, or for a new entry the microseconds since
    the epoch. Not 1: an entry deleted and re-created with another definition between two
    reads would repeat a (name, rev) pair, so :class:`EntryCache` would keep the old
    definition and a claim read before the delete would pass its compare-and-set. A start
    taken from the clock is past every rev an earlier entry of the name reached (each bump
    is one write, far fewer than one per microsecond)."""
    return int(seen) + 1 if seen else time.time_ns() // 1000


class EntryCache:
    """Parsed entries by name and rev, for :meth:`ScheduleStore.entries`: a rev is bumped
    with every definition write, in the same script, and never repeats for a name
    (:func:`next_rev`), so a name and rev name one definition."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, Entry]] = {}

    def get(self, name: str, rev: str) -> Entry | None:
        """Entry ``name`` at ``rev``, if parsed before."""
        cached = self._entries.get(name)
        return cached[1] if cached is not None and cached[0] == rev else None

    def put(self, name: str, rev: str, entry: Entry) -> None:
        """Remember ``entry`` as entry ``name`` at ``rev``."""
        self._entries[name] = (rev, entry)

    def keep(self, names: Iterable[str]) -> None:
        """Forget every entry but ``names`` (the others were deleted)."""
        alive = set(names)
        # list(): a snapshot of the names, taken in one step (concurrent scrapes share it).
        for name in list(self._entries):
            if name not in alive:
                self._entries.pop(name, None)


class ScheduleStore:
    """Reads and writes schedule entries under one key prefix."""

    def __init__(self, client: redis.Redis, keys: Keys, scripts: Scripts) -> None:
        self.client = client
        self.keys = keys
        self.scripts = scripts

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
            # The same entry stored in an older layout (every field written) is unchanged too:
            # an upgrade must not count as an update of every entry.
            if seen.definition == new_json or (stored is not None and stored.entry == entry):
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
            written = self.scripts.upsert(
                entry.name,
                seen=(seen.definition, seen.meta, seen.rev, seen.due),
                definition=new_json,
                meta=meta.to_json(),
                rev=next_rev(seen.rev),
                due=due,
            )
            if written:
                return (UpsertResult.UPDATED if stored else UpsertResult.CREATED), due
            seen = self.snapshot(entry.name)

    @staticmethod
    def _arm(
        entry: Entry, current: Entry | None, meta: Meta, due: float | None, now: float
    ) -> tuple[Meta, float | None]:
        return arm(entry, current, meta, due, now)

    def resume(self, name: str) -> bool:
        """End entry ``name``'s pause after failures (``suspendAfterFailures``): re-armed from
        now, as a resumed suspend is (the slots missed meanwhile do not fire), and the count
        of failed runs in a row starts again. False if it was not paused (or is gone).
        A compare-and-set like :meth:`upsert`, read again if the entry changed meanwhile."""
        seen = self.snapshot(name)
        while True:
            stored = seen.stored()
            if stored is None or stored.paused is None:
                return False
            entry = stored.entry
            meta, due = self._arm(
                entry, replace(entry, suspend=True), stored.meta, None, time.time()
            )
            written = self.scripts.upsert(
                name,
                seen=(seen.definition, seen.meta, seen.rev, seen.due),
                definition=seen.definition or "",
                meta=meta.to_json(),
                rev=next_rev(seen.rev),
                due=due,
            )
            if written:
                return True
            seen = self.snapshot(name)

    def delete(self, name: str) -> bool:
        """Remove entry ``name`` and every key kept for it: its run-now, resume and backfill
        markers, the slots it backfilled, and its runs' history, counters and active set
        (the run records themselves expire with results); True if it existed.

        One transaction, so a run's transition lands wholly before it (and its keys go too)
        or after it, when the entry is gone and the script writes no key of the schedule."""
        keys = self.keys
        key = keys.entry(name)
        with self.client.pipeline() as pipe:
            pipe.delete(key)
            pipe.zrem(keys.due, key)
            pipe.srem(keys.index, name)
            pipe.hdel(keys.run_now, name)
            pipe.hdel(keys.resume, name)
            pipe.hdel(keys.backfill, name)
            pipe.delete(
                keys.backfilled(name),
                keys.schedule_runs(name),
                keys.schedule_stats(name),
                keys.active_runs(name),
            )
            pipe.srem(keys.changed, name)
            self._wake(pipe)
            existed, *_ = pipe.execute()
        return bool(existed)

    def _wake(self, pipe: redis.client.Pipeline) -> None:
        # One pending wake is enough; the list never grows past one element.
        pipe.lpush(self.keys.wake, "1")
        pipe.ltrim(self.keys.wake, 0, 0)

    def last_run_now(self, name: str) -> str | None:
        """The last run-now value handled for entry ``name`` (the operator's annotation)."""
        value: str | None = self.client.hget(self.keys.run_now, name)
        return value

    def note_run_now(self, name: str, value: str) -> None:
        """Remember ``value`` as handled for entry ``name``, so it never runs twice."""
        self.client.hset(self.keys.run_now, name, value)

    def last_resume(self, name: str) -> str | None:
        """The last resume value handled for entry ``name`` (the operator's annotation)."""
        value: str | None = self.client.hget(self.keys.resume, name)
        return value

    def note_resume(self, name: str, value: str) -> None:
        """Remember resume ``value`` as handled for entry ``name``: each value acts once."""
        self.client.hset(self.keys.resume, name, value)

    def last_backfill(self, name: str) -> str | None:
        """The last backfill value handled for entry ``name`` (the operator's annotation)."""
        value: str | None = self.client.hget(self.keys.backfill, name)
        return value

    def note_backfill(self, name: str, value: str) -> None:
        """Remember backfill ``value`` as handled for entry ``name``: each value acts once."""
        self.client.hset(self.keys.backfill, name, value)

    # -- a backfill's slots ---------------------------------------------------------------

    def backfill_check(self, name: str, slots: Sequence[float], since: float) -> list[int] | None:
        """Per past slot of entry ``name``: 0 free to backfill, 1 done (backfilled before, or
        a run was sent for it: its records since ``since`` tell), 2 beat's (at or after the
        entry's due time); None when the entry is gone."""
        return self.scripts.backfill_check(name, slots, since)

    def backfill_claim(
        self,
        name: str,
        slots: Sequence[BackfillSlot],
        *,
        since: float,
        keep_after: float,
        keep: int,
    ) -> list[int] | None:
        """Claim the slots of ``slots`` still free (as :meth:`backfill_check` tells), each
        marked backfilled with its run record written and its message on its queue in one
        atomic step; per slot 0 (claimed), 1 (done) or 2 (beat's), or None when the entry is
        gone. The slots remembered are trimmed to ``keep``, none before ``keep_after``."""
        return self.scripts.backfill_claim(
            name, slots, since=since, now=time.time(), keep_after=keep_after, keep=keep
        )

    # -- reads ----------------------------------------------------------------------------

    def get(self, name: str) -> StoredEntry | None:
        """Entry ``name`` with its firing state, or None."""
        return self.snapshot(name).stored()

    def snapshot(self, name: str) -> Snapshot:
        """Entry ``name``'s hash fields and due score as stored, in one round trip."""
        return self._snapshots([name])[0]

    def names(self) -> set[str]:
        """Every entry name, suspended and finished ones included."""
        return set(self.client.smembers(self.keys.index))

    def entries(self, cache: EntryCache | None = None) -> list[StoredEntry]:
        """Every entry, ordered by name.

        With a ``cache`` (a reader that lists every entry again and again: the api's scrape),
        only the firing state and rev of each entry are read, and a definition is read and
        parsed only when its rev is new to the cache; two round trips at most."""
        if cache is None:
            return sorted(self._load(sorted(self.names()), every=True), key=lambda s: s.entry.name)
        names = sorted(self.names())
        keys = self.keys
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(keys.entry(name), "meta", "rev", "paused")
            pipe.zrange(keys.due, 0, -1, withscores=True)
            replies = pipe.execute()
        scores = dict(replies.pop())
        unknown = [
            name
            for name, (_, rev, _) in zip(names, replies, strict=True)
            if rev and cache.get(name, rev) is None
        ]
        if unknown:
            with self.client.pipeline(transaction=False) as pipe:
                for name in unknown:
                    pipe.hmget(keys.entry(name), "definition", "rev")
                for name, (definition, rev) in zip(unknown, pipe.execute(), strict=True):
                    if definition:
                        cache.put(name, rev or "0", Entry.from_json(definition))
        cache.keep(names)
        out = []
        for name, (meta, rev, paused) in zip(names, replies, strict=True):
            entry = cache.get(name, rev) if rev else None
            if entry is None:
                continue  # deleted (or rewritten) since the listing: the next one shows it
            due = scores.get(keys.entry(name))
            anchor = float(due) if due is not None else time.time()
            out.append(
                StoredEntry(
                    entry,
                    Meta.from_json(meta, default_anchor=anchor),
                    rev,
                    due,
                    int(paused) if paused else None,
                )
            )
        return out

    def _load(self, names: Iterable[str], *, every: bool = False) -> Iterator[StoredEntry]:
        for snapshot in self._snapshots(names, every=every):
            stored = snapshot.stored()
            if stored is not None:
                yield stored

    def _snapshots(self, names: Iterable[str], *, every: bool = False) -> list[Snapshot]:
        """The snapshots of ``names``, in order, in one round trip. ``every``: the names are
        (nearly) all entries, so the whole due set is read in one command rather than one
        score per name (half the commands of a full listing)."""
        names = list(names)
        keys = self.keys
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                key = keys.entry(name)
                pipe.hmget(key, "definition", "meta", "rev", "paused")
                if not every:
                    pipe.zscore(keys.due, key)
            if every:
                pipe.zrange(keys.due, 0, -1, withscores=True)
            replies = pipe.execute()
        if every:
            scores = dict(replies.pop())
            return [
                Snapshot(definition, meta, rev, scores.get(keys.entry(name)), paused)
                for name, (definition, meta, rev, paused) in zip(names, replies, strict=True)
            ]
        snapshots = []
        for i in range(0, len(replies), 2):
            (definition, meta, rev, paused), due = replies[i], replies[i + 1]
            snapshots.append(Snapshot(definition, meta, rev, due, paused))
        return snapshots

    # -- beat's side ----------------------------------------------------------------------

    def due(
        self,
        now: float,
        limit: int,
        *,
        window: int | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> list[StoredEntry]:
        """Up to ``limit`` entries due at ``now``, loaded in one round trip, leaving out the
        entries named in ``exclude`` (being claimed: beat's batch in flight).

        Without ``window`` they are the earliest due. With a ``window``, the candidates are the
        ``window`` earliest due plus the ``limit`` latest due (those that just fell due behind
        a backlog), and ``limit`` of them are taken round-robin across namespaces, earliest
        first within each (see :func:`fair_share`). So a burst in one namespace delays another
        namespace's entry by one batch, not by the rest of the burst.
        """
        due_key, name_of = self.keys.due, self.keys.entry_name
        skip = {self.keys.entry(name) for name in exclude}
        if window is None:
            keys = self.client.zrangebyscore(due_key, "-inf", now, start=0, num=limit + len(skip))
            keys = [k for k in keys if k not in skip][:limit]
        else:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(due_key, "-inf", now, start=0, num=max(window, limit))
                pipe.zrevrangebyscore(due_key, now, "-inf", start=0, num=limit + len(skip))
                earliest, latest = pipe.execute()
            if skip:
                earliest = [k for k in earliest if k not in skip]
                latest = [k for k in latest if k not in skip]
            seen = set(earliest)
            # The latest due all score after the earliest window, so appending them in
            # ascending order keeps the candidates ordered by due time.
            keys = earliest + [k for k in reversed(latest) if k not in seen]
            if len(keys) > limit:
                keys = fair_share(keys, limit, key=lambda k: name_of(k).partition("/")[0])
        # Entries that left the due set or moved past now since the range was read (claimed
        # by another beat, rewritten) are not due: dropped here, not fired early.
        rows = [row for row in self.scripts.load_due(keys) if not row.due > now]
        return self._due_entries(rows)

    def read_due(
        self, now: float, limit: int, metrics: Sequence[tuple[str, int | float]] = ()
    ) -> tuple[list[StoredEntry] | None, float | None]:
        """Every entry due at ``now`` (loaded) and the earliest due time, in one round trip
        (one Lua call, no separate load or next-due read). None instead of the list when
        more than ``limit`` are due: read those in fair batches with :meth:`due`.

        ``metrics`` (counter, increment) pairs are added to the scheduler's counters in the
        same call, so beat's counters cost no round trip of their own.
        """
        rows, first = self.scripts.read_due(now, limit, metrics)
        if rows is None:
            return None, first
        return self._due_entries(rows), first

    def _due_entries(self, rows: Sequence[DueEntry]) -> list[StoredEntry]:
        """The entries of beat's read ``rows``, parsed; rows without a due score (it left
        the due set) are skipped, and those without a hash are dropped from the due set."""
        loaded, missing = [], []
        for row in rows:
            if math.isnan(row.due):
                continue
            if not row.definition:
                missing.append(self.keys.entry(row.name))
                continue
            loaded.append(
                StoredEntry(
                    Entry.from_json(row.definition),
                    Meta.from_json(row.meta, default_anchor=row.due),
                    row.rev or "0",
                    row.due,
                )
            )
        if missing:
            # A due-set member without its hash (deleted mid-read): drop it, as redbeat does.
            self.client.zrem(self.keys.due, *missing)
        return loaded

    def claim(self, claims: Sequence[Claim]) -> tuple[list[bool], float | None]:
        """Claim each due slot and store its entry's new state and due time, writing the
        slot's run record and LPUSHing its message where the claim wins, in one atomic
        script; True where the claim won (the slot is this beat's to fire), and the earliest
        due time after the claims (None: the due set is empty)."""
        return self.scripts.claim(claims, time.time())

    def wait_for_change(
        self, timeout: float, client: redis.Redis | None = None, *, exact: bool = True
    ) -> bool:
        """Block until the store changes or ``timeout`` seconds pass; True if woken.

        ``exact``: the wait ends at a due time, so it must not overshoot (see below); False
        when ending a little late is harmless (a lock renewal well inside its lease)."""
        if timeout <= 0:
            return False
        blocking = client or self.client
        if not exact:
            return bool(blocking.blpop([self.keys.wake], timeout=max(timeout, 0.01)))
        deadline = time.monotonic() + timeout
        # Redis expires blocking timeouts on its `hz` clock (10/s by default), so a BLPOP can
        # overshoot by ~100 ms. Block for all but the last slice, then spend that slice here:
        # firings stay on time. After a blocking wait, the slice checks the wake list every
        # _SLICE_POLL seconds, so a change arriving in it (a new entry due at once) waits that
        # long at most, not the whole slice. A wait shorter than the slice (due times closer
        # together than that) only sleeps: a change then waits for the next due time, which
        # is sooner than the slice, and a busy beat makes no more round trips than it fires.
        coarse = timeout - TIMEOUT_SLACK
        if coarse < 0.01:
            time.sleep(timeout)
            return False
        if blocking.blpop([self.keys.wake], timeout=coarse):
            return True
        remaining = deadline - time.monotonic()
        while remaining > _SLICE_POLL:
            if self.client.lpop(self.keys.wake) is not None:
                return True
            time.sleep(_SLICE_POLL)
            remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        return False
