"""Level-triggered reconcile of one ScheduledTask: from the object as it is now, decide the
writes that bring its schedule entry, finalizer and status in step.

Why not kopf's create/update/delete handlers: kopf's change-detecting handlers cost three
PATCHes and three to four watch events per new resource (its finalizer, its
last-handled-configuration annotation, then the status) and about 10 ms of operator CPU; at
10,000 resources that was 134 s to Ready (bench/REPORT.md, operator scale). Deciding from the
object itself, as controller-runtime reconcilers do, takes one status PATCH and one
finalizer PATCH, or the status PATCH alone where the API server set the finalizer at creation
(the chart's MutatingAdmissionPolicy, manifests/admission), and the watch events our own
writes cause are recognised as in step from a few fields of the validated object
(:class:`~forwarder_operator.resource.ScheduledTask`).
kopf still does the watching, peering, Event posting and patching.

The rules (:func:`plan`):

* alive (no ``deletionTimestamp``): our finalizer must be on it; the spec is applied when
  this generation has not been (``status.observedGeneration``), or on the operator's first
  sight of the object after a start (Redis may have lost the entry, or ``runHistoryLimit``
  the run history, meanwhile); then one run per new value of the run-now annotation.
* being deleted, with our finalizer: the entry and its history go, then the finalizer.
* gone (:func:`gone`: a DELETED event, or a retry that finds no object): the entry goes if
  it is still this object's (the finalizer was forced off, or the object was deleted before
  its finalizer landed).

What to write comes back as a :class:`~forwarder_operator.writer.Plan`, which a
:class:`~forwarder_operator.writer.Writer` writes, whichever path decided it. Redis errors
propagate: the caller writes :func:`unavailable` and leaves the object to the
:class:`~forwarder_operator.retries.RetryQueue`, which the operator's loop drains with backoff.
"""

from __future__ import annotations

import time

from forwarder_worker.dispatch.dispatcher import parse_overrides
from forwarder_worker.names import (
    BACKFILL_ANNOTATION,
    FINALIZER,
    RESUME_ANNOTATION,
    RUN_NOW_ANNOTATION,
    RUN_NOW_OVERRIDES_ANNOTATION,
)
from forwarder_worker.runs.records import ScheduleRuns
from forwarder_worker.schedules.reconcile import apply_schedule
from forwarder_worker.schedules.status import (
    READY,
    REDIS_UNAVAILABLE,
    applied_status,
    runs_status,
    unavailable_status,
)

from forwarder_operator.resource import ObjectMeta, ScheduledTask
from forwarder_operator.services import Services
from forwarder_operator.writer import Event, Plan

NO_RUNS = ScheduleRuns(None, [], 0, 0, 0, 0, None, None)
"""The run history of a schedule that has not run."""


def is_unavailable(task: ScheduledTask) -> bool:
    """Whether status already says Redis is unreachable (so it need not be written again)."""
    return task.status is not None and any(
        c.type == READY and c.reason == REDIS_UNAVAILABLE for c in task.status.conditions
    )


def needs_redis(task: ScheduledTask, *, initial: bool) -> bool:
    """Whether :func:`plan` has Redis work to do for ``task``. Most watch events are our own
    writes coming back, which need none: the handler decides those without a thread."""
    if task.metadata.deletion_timestamp:
        return _must_forget(task.metadata)
    return (
        _must_apply(task, initial=initial)
        or bool(_run_now_value(task.metadata))
        or bool(_resume_value(task.metadata))
        or bool(_backfill_value(task.metadata))
    )


def plan(services: Services, task: ScheduledTask, *, initial: bool) -> Plan:
    """Decide (and do, in Redis) what reconciling ``task`` takes; raises RedisError.

    ``initial`` is the operator's first sight of the object since it started.
    """
    metadata = task.metadata
    name = metadata.entry_name
    result = Plan()
    if metadata.deletion_timestamp:
        if _must_forget(metadata):
            services.forget(name)
            result.remove_finalizer = True
            result.log.append("schedule entry removed")
        return result
    if FINALIZER not in metadata.finalizers:
        result.add_finalizer = True
    resume = _resume_value(metadata)
    resumed = bool(resume) and _resume(services, name, resume or "", result)
    if resumed or _must_apply(task, initial=initial):
        _apply(services, task, result)
    run_now = _run_now_value(metadata)
    if run_now:
        _run_now(services, metadata, run_now, result)
    backfill = _backfill_value(metadata)
    if backfill:
        _backfill(services, metadata, backfill, result)
    return result


def unavailable(task: ScheduledTask, error: Exception) -> Plan:
    """What to write when Redis failed the reconcile: ``Ready=False`` (RedisUnavailable),
    unless status says so already."""
    if is_unavailable(task):
        return Plan()
    status = unavailable_status(
        error, task.metadata.generation, task.previous_status(), time.time()
    )
    return Plan(status=status)


def gone(services: Services, metadata: ObjectMeta) -> Plan:
    """After the object is gone (a DELETED event, or a retry that finds no object): its entry
    goes unless a newer object of the same name owns it now; raises RedisError."""
    result = Plan()
    if forget_if_owned(services, metadata):
        result.log.append("schedule entry removed (the object is gone)")
    return result


def _must_forget(metadata: ObjectMeta) -> bool:
    """Being deleted with our finalizer still on: the entry has to go first."""
    return FINALIZER in metadata.finalizers


def _must_apply(task: ScheduledTask, *, initial: bool) -> bool:
    """The spec has to be applied: first sight, a generation not yet observed, or a status
    that still says Redis was unreachable."""
    observed = None if task.status is None else task.status.observed_generation
    return initial or observed != task.metadata.generation or is_unavailable(task)


def _run_now_value(metadata: ObjectMeta) -> str | None:
    """The run-now annotation's value, if any (whether it is new is Redis's to say)."""
    return metadata.annotations.get(RUN_NOW_ANNOTATION) or None


def _resume_value(metadata: ObjectMeta) -> str | None:
    """The resume annotation's value, if any (whether it is new is Redis's to say)."""
    return metadata.annotations.get(RESUME_ANNOTATION) or None


def _backfill_value(metadata: ObjectMeta) -> str | None:
    """The backfill annotation's value, if any (whether it is new is Redis's to say)."""
    return metadata.annotations.get(BACKFILL_ANNOTATION) or None


def _backfill(services: Services, metadata: ObjectMeta, value: str, result: Plan) -> None:
    """Act on backfill ``value`` once; what it did (or why it was refused) is an Event."""
    try:
        done = services.backfill(metadata.entry_name, value)
    except (ValueError, LookupError) as exc:
        result.events.append(Event("Warning", "BackfillRefused", f"{value!r}: {exc}"))
        return
    if done is None:
        return  # this value was handled once already
    if done.skipped:
        result.events.append(Event("Warning", "BackfillSkipped", done.summary()))
    else:
        result.events.append(Event("Normal", "Backfilled", done.summary()))


def _resume(services: Services, name: str, value: str, result: Plan) -> bool:
    """Act on resume ``value`` once: end a pause after failures. True if it resumed one (the
    caller then re-applies, which writes the Ready condition and the next run)."""
    if services.store.last_resume(name) == value:
        return False
    resumed = services.store.resume(name)
    services.store.note_resume(name, value)
    if resumed:
        result.events.append(Event("Normal", "Resumed", f"resumed for {value!r}"))
    else:
        result.log.append(f"resume {value!r}: not suspended after failures; nothing to do")
    return resumed


def _apply(services: Services, task: ScheduledTask, result: Plan) -> None:
    metadata = task.metadata
    generation = metadata.generation
    applied = apply_schedule(
        services.store,
        metadata.namespace,
        metadata.name,
        task.spec,
        uid=metadata.uid,
        generation=generation or 0,
        known_tasks=services.known_tasks,
    )
    result.status.update(applied_status(applied, generation, task.previous_status(), time.time()))
    if applied.entry is not None and applied.reason != "Stale":
        if task.status is not None:
            # The run history too: runHistoryLimit may have changed, and after a restart the
            # status loop reports only what changes from then on.
            history = services.runs.summary(applied.entry.name, applied.entry.history)
            result.status.update(runs_status(history, services.store.get(applied.entry.name)))
        else:
            # A new object has no runs yet (a deleted namesake's history went with it), and
            # applied_status holds its next run: two Redis reads fewer per new object.
            fields = runs_status(NO_RUNS, None)
            del fields["nextRunTime"]
            # Nor has it missed or excluded a slot yet.
            fields.update(missedRunCount=0, excludedRunCount=0)
            result.status.update(fields)
    if applied.ready:
        # A re-apply that found the entry as it was (every object, at each operator start) is
        # not news: only a created or changed entry is logged, as controllers log changes.
        if applied.changed:
            result.log.append(applied.message)
    else:
        result.events.append(Event("Warning", applied.reason, applied.message))


def _run_now(services: Services, metadata: ObjectMeta, value: str, result: Plan) -> None:
    name = metadata.entry_name
    text = metadata.annotations.get(RUN_NOW_OVERRIDES_ANNOTATION)
    try:
        overrides = None if text is None else parse_overrides(text, value)
    except ValueError as exc:
        # Running with arguments other than asked would be worse than not running: this
        # value is refused (once), and the next value is a new attempt.
        if services.refuse_run_now(name, value):
            result.events.append(Event("Warning", "RunNowFailed", f"{value!r}: {exc}"))
        return
    try:
        outcome = services.run_now(name, value, overrides)
    except LookupError as exc:
        result.events.append(Event("Warning", "RunNowFailed", str(exc)))
        return
    if outcome is None:
        return  # this value already ran (or failed) once
    if outcome.sent:
        result.events.append(Event("Normal", "RunNow", f"run {outcome.run_id} sent for {value!r}"))
    else:
        result.events.append(Event("Warning", "RunNowSkipped", outcome.reason or "skipped"))


def forget_if_owned(services: Services, metadata: ObjectMeta) -> bool:
    """Remove the entry of an object that is gone, unless a newer object of the same name owns
    it now. Returns whether anything was removed."""
    name = metadata.entry_name
    stored = services.store.get(name)
    if stored is not None and stored.entry.uid not in ("", metadata.uid):
        return False
    services.forget(name)
    return stored is not None
