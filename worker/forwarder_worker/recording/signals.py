"""Celery signal receivers that write a run record for every run of every task.

Connected when the Forwarder app is created, they run in the worker (received, revoked,
unknown) and in its pool processes (started, retried, succeeded, failed). A receiver that
fails is logged by Celery and never fails the task. A success is usually recorded already,
with the result (:mod:`forwarder_worker.recording.result_backend`); its receiver then writes
nothing.
"""

from __future__ import annotations

import os
import time
import traceback as tb
from typing import Any

from celery import Celery, signals

from forwarder_worker._redis.clients import redis_client
from forwarder_worker.names import HEADER_SCHEDULE, HEADER_SLOT
from forwarder_worker.recording.result_backend import recorded_with_result
from forwarder_worker.runs.records import RunLog, bounded
from forwarder_worker.settings import settings_of

_LOGS: dict[tuple[int, int], RunLog] = {}


def run_log(app: Celery) -> RunLog:
    """The RunLog of ``app``, one per app and process (Redis sockets do not survive fork)."""
    key = (id(app), os.getpid())
    if key not in _LOGS:
        settings = settings_of(app)
        _LOGS[key] = RunLog(
            redis_client(settings),
            settings.key_prefix,
            ttl=settings.result_expires,
            global_limit=settings.global_history_limit,
            schedule_limit=settings.run_history_limit,
            result_limit=settings.result_max_chars,
        )
    return _LOGS[key]


def _is_forwarder(app: Any) -> bool:
    return getattr(app, "forwarder_settings", None) is not None


def _schedule_fields(headers: dict[str, Any] | None) -> dict[str, Any]:
    headers = headers or {}
    return {"schedule": headers.get(HEADER_SCHEDULE), "slot": headers.get(HEADER_SLOT)}


@signals.task_received.connect
def _received(sender: Any = None, request: Any = None, **_: Any) -> None:
    app = request.task.app if request is not None and request.task else None
    if request is None or not _is_forwarder(app):
        return
    run_log(app).transition(
        request.id,
        "RECEIVED",
        task=request.name,
        received=time.time(),
        worker=request.hostname,
        **_schedule_fields(request.request_dict),
    )


@signals.task_prerun.connect
def _started(task_id: str = "", task: Any = None, **_: Any) -> None:
    if task is None or not _is_forwarder(task.app):
        return
    run_log(task.app).transition(
        task_id,
        "STARTED",
        task=task.name,
        started=time.time(),
        worker=task.request.hostname,
        retries=task.request.retries or 0,
        **_schedule_fields(task.request.headers),
    )


@signals.task_success.connect
def _succeeded(sender: Any = None, result: Any = None, **_: Any) -> None:
    if sender is None or not _is_forwarder(sender.app):
        return
    if recorded_with_result(sender.request.id):
        return  # written with the result, in the same round trip
    log = run_log(sender.app)
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
    if sender is None or not _is_forwarder(sender.app):
        return
    log = run_log(sender.app)
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
    if sender is None or request is None or not _is_forwarder(sender.app):
        return
    run_log(sender.app).transition(
        request.id,
        "RETRY",
        task=sender.name,
        reason=bounded(str(reason), 500),
        retries=(request.retries or 0) + 1,
    )


@signals.task_revoked.connect
def _revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    expired: bool = False,
    **_: Any,
) -> None:
    app = getattr(sender, "app", None)
    if request is None or not _is_forwarder(app):
        return
    reason = "expired" if expired else "terminated" if terminated else "revoked"
    # `request` is a worker Request or a task Context depending on where the revoke landed.
    name = getattr(sender, "name", None) or getattr(request, "name", None) or ""
    run_log(app).transition(request.id, "REVOKED", task=name, finished=time.time(), reason=reason)


@signals.task_unknown.connect
def _unknown(
    sender: Any = None,
    name: str = "",
    id: str = "",
    exc: Any = None,
    **_: Any,
) -> None:
    app = getattr(getattr(sender, "app", None), "app", None) or getattr(sender, "app", None)
    if not id or not _is_forwarder(app):
        return
    run_log(app).transition(
        id,
        "FAILURE",
        task=name,
        finished=time.time(),
        error_type="NotRegistered",
        error=f"task {name!r} is not registered on the worker",
    )
