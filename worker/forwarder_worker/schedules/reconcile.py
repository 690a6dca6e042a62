"""Turning a declared ScheduledTask into a live schedule entry, for every source alike.

The kopf operator (resources), local mode (YAML files) and the api validate and apply a
schedule through :func:`apply_schedule`, so the rules and messages are the same wherever a
schedule comes from. Callers report the result in their own way (a status condition, a log
line, an HTTP error).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from forwarder_worker.names import RESUME_ANNOTATION, SUSPENDED_AFTER_FAILURES
from forwarder_worker.schedules.model import InvalidSpec, ScheduledTaskSpec, parse_spec
from forwarder_worker.schedules.preview import upcoming
from forwarder_worker.schedules.store import Entry, Meta, ScheduleStore, UpsertResult
from forwarder_worker.schedules.timing import utc_iso


@dataclass(frozen=True)
class ApplyResult:
    """Outcome of applying one schedule: ready or not, why, and when it fires next."""

    ready: bool
    # Scheduled | Suspended | Completed | SuspendedAfterFailures | InvalidSpec | UnknownTask
    # | Stale
    reason: str
    message: str
    next_run: float | None = None
    spec: ScheduledTaskSpec | None = None
    entry: Entry | None = None
    changed: bool = True  # False: the store already held exactly this entry


def validate(
    raw_spec: Any,
    known_tasks: Collection[str] | None = None,
    *,
    allow_past_at: bool = False,
) -> ScheduledTaskSpec:
    """Validate a raw spec, and its task name against ``known_tasks`` when given."""
    spec = parse_spec(raw_spec, allow_past_at=allow_past_at)
    if known_tasks is not None and spec.task not in known_tasks:
        raise InvalidSpec(
            f"spec.task: {spec.task!r} is not a registered task "
            f"(known: {', '.join(sorted(known_tasks)) or 'none'})"
        )
    return spec


def apply_schedule(
    store: ScheduleStore,
    namespace: str,
    name: str,
    raw_spec: Any,
    *,
    uid: str = "",
    generation: int = 0,
    known_tasks: Collection[str] | None = None,
) -> ApplyResult:
    """Validate ``raw_spec`` and upsert its entry ``<namespace>/<name>``.

    An invalid spec is reported, never raised. Like a rejected ``kubectl apply``, it loses
    nothing: the last valid version of the entry, if any, stays scheduled.
    """
    entry_name = f"{namespace}/{name}"
    # One read serves both the checks below and the upsert's compare-and-set.
    snapshot = store.snapshot(entry_name)
    existing = snapshot.stored()
    # A one-off that already fired stays valid even though its time is now past.
    allow_past = (
        existing is not None
        and existing.entry.uid == uid
        and (existing.meta.done or "at" in existing.entry.schedule)
    )
    try:
        spec = validate(raw_spec, known_tasks, allow_past_at=allow_past)
        entry = Entry.from_spec(entry_name, spec, uid=uid, generation=generation)
    except (InvalidSpec, ValueError) as exc:
        reason = "UnknownTask" if "is not a registered task" in str(exc) else "InvalidSpec"
        message = str(exc)
        if existing is not None and existing.entry.uid == uid:
            message += (
                f" (generation {existing.entry.generation}, the last valid one, stays scheduled)"
            )
        return ApplyResult(False, reason, message)
    result, due = store.upsert(entry, current=snapshot)
    if result is UpsertResult.STALE:
        return ApplyResult(
            False,
            "Stale",
            f"generation {generation} is older than the stored entry's; ignored",
            due,
            spec,
            entry,
        )
    return replace(describe(spec, entry, due, store), changed=result is not UpsertResult.UNCHANGED)


def completed_message(entry: Entry, meta: Meta | None) -> str:
    """Why an entry fires no more: its one-off fired, its run limit or its window's end."""
    if meta is not None and "at" in entry.schedule and meta.count:
        return "has fired"
    if meta is not None and entry.limit_reached(meta):
        return f"maxRuns {entry.max_runs} reached"
    if entry.end is not None:
        return f"no slot left before endTime {utc_iso(entry.end)}"
    return "has no future run"


def paused_message(failures: int) -> str:
    """Why a schedule suspended after failures does not fire, and how to resume it."""
    return (
        f"suspended after {failures} failed runs in a row (suspendAfterFailures); resume with "
        f"a new value of the annotation {RESUME_ANNOTATION}, POST .../resume, or a spec change"
    )


def describe(
    spec: ScheduledTaskSpec, entry: Entry, due: float | None, store: ScheduleStore
) -> ApplyResult:
    """The Ready condition for an entry that is stored."""
    what = spec.schedule.describe()
    if spec.suspend:
        return ApplyResult(True, "Suspended", f"{what} is suspended", None, spec, entry)
    if due is None:
        stored = store.get(entry.name)
        if stored is not None and stored.paused is not None:
            return ApplyResult(
                False,
                SUSPENDED_AFTER_FAILURES,
                paused_message(stored.paused),
                None,
                spec,
                entry,
            )
        meta = stored.meta if stored is not None else None
        message = f"{what}: {completed_message(entry, meta)}"
        return ApplyResult(True, "Completed", message, None, spec, entry)
    # The next slot that fires: the due time may be a checkpoint in a long exclusion.
    first = upcoming(entry, Meta(anchor=due), due, 1)
    when = utc_iso(first[0] if first else due)
    return ApplyResult(
        True, "Scheduled", f"{what} ({spec.time_zone}); next run {when}", due, spec, entry
    )
