"""Celery signal receivers that write a run record for every run of every task.

Connected when this module is imported: a Forwarder app lists it with its task modules, so
a worker imports it as it starts. They run in the worker (received, revoked, unknown) and in
its pool processes (started, retried, succeeded, failed), each through the run log of the
task's app (:func:`~forwarder_worker.core.core_of`); tasks of other apps are left alone. A
receiver that fails is logged by Celery and never fails the task. The worker's RECEIVED
transitions are held up to ``received_write_delay`` (5 ms) and written together, one round
trip on the worker's event loop for all of them, off each run's path (docs/reliability.md);
the receipt's time rides on the request to the pool process, whose STARTED records it too,
and the worker writes what it holds as it shuts down. A start and a success go
in the round trips of Celery's own STARTED state and result where Celery stores them
(:mod:`forwarder_worker.recording.result_backend`): the ``task_prerun`` receiver leaves its
transition to the result backend, and the ``task_success`` receiver then finds the run
recorded already and writes nothing.
"""

from __future__ import annotations

import logging
import time
import traceback as tb
from datetime import datetime
from typing import Any

from celery import signals
from celery.app.task import get_actual_ignore_result
from kombu.asynchronous import get_event_loop

from forwarder_worker.core import core_of, require_core
from forwarder_worker.names import HEADER_SCHEDULE, HEADER_SLOT, REQUEST_RECEIVED
from forwarder_worker.recording.result_backend import RecordingRedisBackend
from forwarder_worker.runs.records import RunLog, bounded

logger = logging.getLogger(__name__)


def run_log(app: Any) -> RunLog | None:
    """The run log of ``app``'s Core, or None for an app that is not Forwarder's. One per
    process: its client's connection pool starts afresh in a forked pool child."""
    core = core_of(app)
    return None if core is None else core.runs


def _schedule_fields(headers: dict[str, Any] | None) -> dict[str, Any]:
    headers = headers or {}
    return {"schedule": headers.get(HEADER_SCHEDULE), "slot": headers.get(HEADER_SLOT)}


@signals.task_received.connect
def _received(sender: Any = None, request: Any = None, **_: Any) -> None:
    app = request.task.app if request is not None and request.task else None
    log = run_log(app)
    if log is None:
        return
    now = time.time()
    headers = request.request_dict
    # The pool process's task request is built from this dict: its STARTED records the
    # receipt too, so a RECEIVED landing after the run's end (ignored there) loses nothing.
    headers[REQUEST_RECEIVED] = now
    write = log.build(
        request.id,
        "RECEIVED",
        task=request.name,
        received=now,
        worker=request.hostname,
        **_schedule_fields(headers),
    )
    delay = require_core(app).settings.received_write_delay
    hub = get_event_loop()  # the worker's event loop (None with a pool that has none)
    if delay <= 0 or hub is None:
        log.write(write)
    elif log.pend(write):
        # Off the per-run path of the worker's one thread: one round trip for every RECEIVED
        # of the next few milliseconds. Written on the event loop, in this thread, where
        # the runs are received: no thread of its own to compete for the GIL.
        hub.call_later(delay, _flush_received, log)  # type: ignore[no-untyped-call]


def _flush_received(log: RunLog) -> None:
    try:
        log.flush()
    except Exception:
        # As a receiver's failure: logged, never failing the runs (their STARTED records
        # their receipt).
        logger.exception("RECEIVED transitions not recorded")


@signals.worker_shutdown.connect
def _shutdown(sender: Any = None, **_: Any) -> None:
    log = run_log(getattr(sender, "app", None))
    if log is not None:
        _flush_received(log)


def _stores_started(task: Any) -> bool:
    """Whether Celery stores ``task``'s STARTED state through our result backend right after
    ``task_prerun`` (its trace's own test: ``task_track_started``, not eager, a result kept)."""
    request = task.request
    return (
        isinstance(task.backend, RecordingRedisBackend)
        and bool(task.track_started)
        and not request.is_eager
        and not get_actual_ignore_result(task, request)
    )


@signals.task_prerun.connect
def _started(task_id: str = "", task: Any = None, **_: Any) -> None:
    log = run_log(task.app) if task is not None else None
    if log is None:
        return
    write = log.build(
        task_id,
        "STARTED",
        task=task.name,
        started=time.time(),
        worker=task.request.hostname,
        retries=task.request.retries or 0,
        received=task.request.get(REQUEST_RECEIVED),
        **_schedule_fields(task.request.headers),
    )
    if _stores_started(task):
        log.defer(write)  # written with Celery's STARTED state, in its round trip
    else:
        log.write(write)


@signals.task_success.connect
def _succeeded(sender: Any = None, result: Any = None, **_: Any) -> None:
    log = run_log(sender.app) if sender is not None else None
    if log is None:
        return
    if log.recorded_with_result(sender.request.id):
        return  # written with the result, in the same round trip
    log.transition(
        sender.request.id,
        "SUCCESS",
        task=sender.name,
        finished=time.time(),
        result=bounded(result, log.result_limit),
    )


@signals.task_failure.connect
def _failed(
    sender: Any = None,
    task_id: str = "",
    exception: BaseException | None = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    log = run_log(sender.app) if sender is not None else None
    if log is None:
        return
    trace = str(einfo) if einfo is not None else "".join(tb.format_exception(exception))
    log.transition(
        task_id,
        "FAILURE",
        task=sender.name,
        finished=time.time(),
        error_type=type(exception).__name__ if exception else "Error",
        error=bounded(str(exception), log.result_limit),
        traceback=trace[-8000:],
    )


@signals.task_retry.connect
def _retried(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    log = run_log(sender.app) if sender is not None else None
    if request is None or log is None:
        return
    # The reason is Celery's Retry: what failed (its exc) and when the next attempt is due
    # (its `when`, seconds or an instant), which bounds how long the retry holds Forbid.
    failed = getattr(reason, "exc", None)
    text = f"{type(failed).__name__}: {failed}" if isinstance(failed, BaseException) else reason
    when = getattr(reason, "when", None)
    now = time.time()
    if isinstance(when, (int, float)):
        retry_at: float | None = now + float(when)
    elif isinstance(when, datetime):
        retry_at = when.timestamp()
    else:
        retry_at = None
    log.transition(
        request.id,
        "RETRY",
        task=sender.name,
        reason=bounded(str(text), 500),
        retries=(request.retries or 0) + 1,
        retry_at=retry_at,
    )


@signals.task_revoked.connect
def _revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    expired: bool = False,
    **_: Any,
) -> None:
    log = run_log(getattr(sender, "app", None))
    if request is None or log is None:
        return
    reason = "expired" if expired else "terminated" if terminated else "revoked"
    # `request` is a worker Request or a task Context depending on where the revoke landed.
    name = getattr(sender, "name", None) or getattr(request, "name", None) or ""
    log.transition(request.id, "REVOKED", task=name, finished=time.time(), reason=reason)


@signals.task_unknown.connect
def _unknown(
    sender: Any = None,
    name: str = "",
    id: str = "",
    exc: Any = None,
    **_: Any,
) -> None:
    app = getattr(getattr(sender, "app", None), "app", None) or getattr(sender, "app", None)
    log = run_log(app)
    if not id or log is None:
        return
    log.transition(
        id,
        "FAILURE",
        task=name,
        finished=time.time(),
        error_type="NotRegistered",
        error=f"task {name!r} is not registered on the worker",
    )
