"""Level-triggered reconcile of one ScheduledTask: from the object as it is now, decide the
writes that bring its schedule entry, finalizer and status in step.

Why not kopf's create/update/delete handlers: kopf's change-detecting handlers cost three
PATCHes and three to four watch events per new resource (its finalizer, its
last-handled-configuration annotation, then the status) and about 10 ms of operator CPU; at
10,000 resources that was 134 s to Ready (bench/REPORT.md, operator scale). Deciding from the
object itself, as controller-runtime reconcilers do, takes one status PATCH and one
finalizer PATCH, and the watch events our own writes cause are recognised as in step and cost
a dictionary lookup. kopf still does the watching, peering, Event posting and patching.

The rules (:func:`plan`):

* alive (no ``deletionTimestamp``): our finalizer must be on it; the spec is applied when
  this generation has not been (``status.observedGeneration``), or on the operator's first
  sight of the object after a start (Redis may have lost the entry, or ``runHistoryLimit``
  the run history, meanwhile); then one run per new value of the run-now annotation.
* being deleted, with our finalizer: the entry and its history go, then the finalizer.
* gone (a DELETED event): the entry goes if it is still this object's (the finalizer was
  forced off, or the object was deleted before its finalizer landed).

Redis errors propagate: the caller marks the object unavailable and leaves it to the
:class:`~forwarder_operator.retries.RetryQueue`, which the operator's loop drains with backoff.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from forwarder_worker.names import FINALIZER, RUN_NOW_ANNOTATION
from forwarder_worker.runs.records import ScheduleRuns
from forwarder_worker.schedules.reconcile import apply_schedule
from forwarder_worker.schedules.status import READY, REDIS_UNAVAILABLE, applied_status, runs_status

from forwarder_operator.services import Services

NO_RUNS = ScheduleRuns(None, [], 0, 0, 0, 0, None, None)
"""The run history of a schedule that has not run."""


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the object."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    """What to write for one object; empty when it is in step."""

    status: dict[str, Any] = field(default_factory=dict)
    add_finalizer: bool = False
    remove_finalizer: bool = False
    events: list[Event] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def entry_name(metadata: Mapping[str, Any]) -> str:
    """The schedule entry of a ScheduledTask: ``<namespace>/<name>``."""
    return f"{metadata['namespace']}/{metadata['name']}"


def is_unavailable(status: Mapping[str, Any]) -> bool:
    """Whether status already says Redis is unreachable (so it need not be written again)."""
    return any(
        c.get("type") == READY and c.get("reason") == REDIS_UNAVAILABLE
        for c in status.get("conditions") or ()
    )


def needs_redis(body: Mapping[str, Any], *, initial: bool) -> bool:
    """Whether :func:`plan` has Redis work to do for ``body``. Most watch events are our own
    writes coming back, which need none: the handler decides those without a thread."""
    metadata = body["metadata"]
    if metadata.get("deletionTimestamp"):
        return _must_forget(metadata)
    return _must_apply(body, initial=initial) or bool(_run_now_value(metadata))


def plan(services: Services, body: Mapping[str, Any], *, initial: bool) -> Plan:
    """Decide (and do, in Redis) what reconciling ``body`` takes; raises RedisError.

    ``initial`` is the operator's first sight of the object since it started.
    """
    metadata = body["metadata"]
    name = entry_name(metadata)
    result = Plan()
    if metadata.get("deletionTimestamp"):
        if _must_forget(metadata):
            services.forget(name)
            result.remove_finalizer = True
            result.log.append("schedule entry removed")
        return result
    if FINALIZER not in (metadata.get("finalizers") or ()):
        result.add_finalizer = True
    if _must_apply(body, initial=initial):
        _apply(services, body, result)
    run_now = _run_now_value(metadata)
    if run_now:
        _run_now(services, name, run_now, result)
    return result


def _must_forget(metadata: Mapping[str, Any]) -> bool:
    """Being deleted with our finalizer still on: the entry has to go first."""
    return FINALIZER in (metadata.get("finalizers") or ())


def _must_apply(body: Mapping[str, Any], *, initial: bool) -> bool:
    """The spec has to be applied: first sight, a generation not yet observed, or a status
    that still says Redis was unreachable."""
    status = body.get("status") or {}
    return (
        initial
        or status.get("observedGeneration") != body["metadata"].get("generation")
        or is_unavailable(status)
    )


def _run_now_value(metadata: Mapping[str, Any]) -> str | None:
    """The run-now annotation's value, if any (whether it is new is Redis's to say)."""
    value = (metadata.get("annotations") or {}).get(RUN_NOW_ANNOTATION)
    return str(value) if value else None


def _apply(services: Services, body: Mapping[str, Any], result: Plan) -> None:
    metadata = body["metadata"]
    generation = metadata.get("generation")
    applied = apply_schedule(
        services.store,
        metadata["namespace"],
        metadata["name"],
        dict(body.get("spec") or {}),
        uid=metadata.get("uid", ""),
        generation=int(generation or 0),
        known_tasks=services.known_tasks,
    )
    before = body.get("status") or {}
    result.status.update(applied_status(applied, generation, before, time.time()))
    if applied.entry is not None and applied.reason != "Stale":
        if before:
            # The run history too: runHistoryLimit may have changed, and after a restart the
            # status loop reports only what changes from then on.
            history = services.runs.summary(applied.entry.name, applied.entry.history)
            result.status.update(runs_status(history, services.store.get(applied.entry.name)))
        else:
            # A new object has no runs yet (a deleted namesake's history went with it), and
            # applied_status holds its next run: two Redis reads fewer per new object.
            fields = runs_status(NO_RUNS, None)
            del fields["nextRunTime"]
            result.status.update(fields)
    if applied.ready:
        # A re-apply that found the entry as it was (every object, at each operator start) is
        # not news: only a created or changed entry is logged, as controllers log changes.
        if applied.changed:
            result.log.append(applied.message)
    else:
        result.events.append(Event("Warning", applied.reason, applied.message))


def _run_now(services: Services, name: str, value: str, result: Plan) -> None:
    try:
        outcome = services.run_now(name, value)
    except LookupError as exc:
        result.events.append(Event("Warning", "RunNowFailed", str(exc)))
        return
    if outcome is None:
        return  # this value already ran (or failed) once
    if outcome.sent:
        result.events.append(Event("Normal", "RunNow", f"run {outcome.run_id} sent for {value!r}"))
    else:
        result.events.append(Event("Warning", "RunNowSkipped", outcome.reason or "skipped"))


def forget_if_owned(services: Services, metadata: Mapping[str, Any]) -> bool:
    """After the object is gone: remove its entry unless a newer object of the same name
    owns it now. Returns whether anything was removed."""
    name = entry_name(metadata)
    stored = services.store.get(name)
    if stored is not None and stored.entry.uid not in ("", metadata.get("uid")):
        return False
    services.forget(name)
    return stored is not None
