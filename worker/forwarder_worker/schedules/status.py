"""ScheduledTask status in Kubernetes' conventions, built from the core's results.

Pure functions: the operator (handlers, sweep, status loop) and the api's local mode all
describe a schedule the same way, and tests can check the shapes without a cluster. Times
are RFC 3339 UTC strings; a ``None`` value in a merge patch removes the field (a suspended
task has no ``nextRunTime``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from forwarder_worker.runs.records import RunRecord, ScheduleRuns
from forwarder_worker.schedules.preview import NEXT_RUN_TIMES, upcoming
from forwarder_worker.schedules.reconcile import ApplyResult, completed_message
from forwarder_worker.schedules.store import Meta, StoredEntry
from forwarder_worker.schedules.timing import utc_iso

READY = "Ready"
REDIS_UNAVAILABLE = "RedisUnavailable"
# Status keeps results and errors short: the full text is in the run record (GET /runs/{id}).
STATUS_TEXT_LIMIT = 512


def _iso(ts: float | None) -> str | None:
    return None if ts is None else utc_iso(ts)


def _short(text: str | None) -> str | None:
    if text is None or len(text) <= STATUS_TEXT_LIMIT:
        return text
    return text[: STATUS_TEXT_LIMIT - 1] + "…"


def ready_condition(
    ready: bool,
    reason: str,
    message: str,
    generation: int | None,
    previous: Sequence[Mapping[str, Any]] | None,
    now: float,
) -> dict[str, Any]:
    """The Ready condition; ``lastTransitionTime`` moves only when its status flips."""
    status = "True" if ready else "False"
    before = next((c for c in previous or () if c.get("type") == READY), None)
    since = (
        before.get("lastTransitionTime")
        if before is not None and before.get("status") == status
        else None
    )
    condition: dict[str, Any] = {
        "type": READY,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or utc_iso(now),
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def applied_status(
    result: ApplyResult,
    generation: int | None,
    previous: Mapping[str, Any],
    now: float,
) -> dict[str, Any]:
    """Status after applying a spec. An invalid spec leaves schedule and next run as they
    were: the last valid entry, if any, stays scheduled."""
    status: dict[str, Any] = {
        "conditions": [
            ready_condition(
                result.ready,
                result.reason,
                result.message,
                generation,
                previous.get("conditions"),
                now,
            )
        ],
    }
    if generation is not None:
        status["observedGeneration"] = generation
    if result.spec is not None and result.reason != "Stale":
        status["schedule"] = result.spec.schedule.describe()
        status["nextRunTime"] = _iso(result.next_run)
        if result.entry is not None:
            # From a fresh firing state: exact for a new or re-created entry; the status
            # pass writes the stored one's (its runs left, its grid) after each firing.
            anchor = Meta(anchor=result.next_run or now)
            times = upcoming(result.entry, anchor, result.next_run, NEXT_RUN_TIMES)
            status["nextRunTimes"] = [_iso(t) for t in times]
            status["nextRunTime"] = _iso(times[0]) if times else None
    return status


def unavailable_status(
    error: Exception, generation: int | None, previous: Mapping[str, Any], now: float
) -> dict[str, Any]:
    """Status while Redis cannot be reached (the handler retries with backoff)."""
    message = f"Redis is unreachable, retrying: {error}"
    return {
        "conditions": [
            ready_condition(
                False, REDIS_UNAVAILABLE, message, generation, previous.get("conditions"), now
            )
        ]
    }


def run_summary(record: RunRecord) -> dict[str, Any]:
    """One run as ``status.lastRun`` / ``status.recentRuns[]`` shows it."""
    error = record.error
    if record.error_type and error:
        error = f"{record.error_type}: {error}"
    elif record.error_type:
        error = record.error_type
    summary = {
        "taskId": record.id,
        "state": record.state,
        "source": record.source,
        "scheduledAt": _iso(record.slot),
        "startedAt": _iso(record.started),
        "finishedAt": _iso(record.finished),
        "result": _short(record.result),
        "error": _short(error),
        "reason": _short(record.reason),
    }
    return {k: v for k, v in summary.items() if v is not None}


def runs_status(runs: ScheduleRuns, stored: StoredEntry | None) -> dict[str, Any]:
    """The run-history part of status, plus what moves with each firing: the next due
    times, and the slots missed and excluded so far."""
    status: dict[str, Any] = {
        "lastRun": None if runs.last_run is None else run_summary(runs.last_run),
        "recentRuns": [run_summary(r) for r in runs.recent],
        "totalRunCount": runs.total,
        "succeededRunCount": runs.succeeded,
        "failedRunCount": runs.failed,
        "skippedRunCount": runs.skipped_overlap,
        "consecutiveFailures": runs.consecutive_failures,
        "lastScheduleTime": _iso(runs.last_schedule_time),
        "lastSuccessfulTime": _iso(runs.last_successful_time),
        "lastFailureTime": _iso(runs.last_failure_time),
        "nextRunTime": None if stored is None else _iso(stored.due),
    }
    if stored is not None:
        times = upcoming(stored.entry, stored.meta, stored.due, NEXT_RUN_TIMES)
        status["nextRunTimes"] = [_iso(t) for t in times]
        # Not the due time itself: in a long exclusion that is a checkpoint, not a run.
        status["nextRunTime"] = _iso(times[0]) if times else None
        status["missedRunCount"] = stored.meta.missed
        status["excludedRunCount"] = stored.meta.excluded
    return status


def completed_status(stored: StoredEntry) -> dict[str, Any]:
    """The Ready condition of an entry beat completed (its one-off fired, its window ended,
    its maxRuns reached), or nothing for one that is not complete. Its transition time is
    when beat completed it, so writing it twice writes the same."""
    if not stored.meta.done or stored.entry.suspend:
        return {}
    condition: dict[str, Any] = {
        "type": READY,
        "status": "True",
        "reason": "Completed",
        "message": completed_message(stored.entry, stored.meta),
        "lastTransitionTime": utc_iso(stored.meta.ended or stored.meta.last or 0),
    }
    if stored.entry.generation:
        condition["observedGeneration"] = stored.entry.generation
    return {"conditions": [condition]}
