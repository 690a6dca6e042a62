"""The workers' result backend: Celery's Redis backend, writing a run's STARTED and SUCCESS
transitions in the same round trips as Celery's STARTED state and its result.

Celery stores a task's STARTED state (``task_track_started``) and its result (SET and
PUBLISH of ``celery-task-meta-<id>``, one MULTI each) in round trips of its own; our
receivers (:mod:`forwarder_worker.recording.signals`) wrote the run record's STARTED and
SUCCESS transitions in two more, and a client waiting on the run record (the api's long poll)
heard the end one round trip after a client waiting on Celery's result. Here each
transition runs in the transaction of the state Celery stores with it (MULTI: SET, PUBLISH,
the transition script):

* STARTED: the ``task_prerun`` receiver, which runs just before Celery stores STARTED,
  leaves the transition with the run log (:meth:`~forwarder_worker.runs.records.RunLog.defer`)
  when Celery is about to store it, and this backend takes it;
* SUCCESS: written with the result, and the run log remembers it, so the ``task_success``
  receiver, asking the same run log, writes nothing more.

If the script fails (NOSCRIPT, once Redis restarted), the state is still stored as Celery
stores it and the transition is written as before: a STARTED at once, on its own, a SUCCESS by
its receiver. If the whole transaction fails, a STARTED goes back to the run log, and the run's
next transition writes it first. Failures, retries and revocations are recorded by the
receivers, as they have tracebacks or other states to tell.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, NamedTuple

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend

from forwarder_worker.core import core_of
from forwarder_worker.runs.records import RunLog, RunWrite

log = logging.getLogger(__name__)
_local = threading.local()


class _Pending(NamedTuple):
    """The transitions to write with the state Celery is storing (in this thread)."""

    runs: RunLog
    started: RunWrite | None  # deferred by the task_prerun receiver
    success: RunWrite | None


class RecordingRedisBackend(RedisBackend):
    """Celery's Redis result backend; a run's STARTED and SUCCESS transitions go in the round
    trips of Celery's STARTED state and result."""

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        core = core_of(self.app)
        pending = None
        if core is not None and state in (states.STARTED, states.SUCCESS):
            runs = core.runs
            started = runs.take_deferred(task_id)
            name = getattr(request, "task", None)
            success = (
                runs.success_write(task_id, name, result)
                if state == states.SUCCESS and isinstance(name, str)
                else None
            )
            if started is not None or success is not None:
                pending = _Pending(runs, started, success)
        if pending is None:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        _local.pending = pending
        _local.sent = False
        try:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        finally:
            if not _local.sent and pending.started is not None:
                # Not sent (the store failed): the run's next transition writes it first.
                pending.runs.defer(pending.started)
            _local.pending = None

    def _set(self, key: str, value: Any, expires: Any = None) -> None:
        pending: _Pending | None = getattr(_local, "pending", None)
        if pending is None:
            super()._set(key, value, expires)
            return
        if expires is None:
            expires = self.expires
        writes = [w for w in (pending.started, pending.success) if w is not None]
        with self.client.pipeline() as pipe:
            if expires:
                pipe.set(key, value, ex=expires)
            else:
                pipe.set(key, value)
            pipe.publish(key, value)
            for write in writes:
                pending.runs.write_on(pipe, write)
            replies = pipe.execute(raise_on_error=False)
        for reply in replies[:2]:
            if isinstance(reply, Exception):
                raise reply
        _local.sent = True
        for write, reply in zip(writes, replies[2:], strict=True):
            if not isinstance(reply, Exception):
                if write is pending.success:
                    pending.runs.note_with_result(write.run_id)
            elif write is pending.started:
                # Loads the script Redis lost; a failure must not fail the task (Celery
                # would record an internal error), so it is logged, as a receiver's is.
                try:
                    pending.runs.write(write)
                except Exception:
                    log.exception("run %s: STARTED not recorded", write.run_id)
            # A SUCCESS that failed is written by the task_success receiver.


class RecordingSentinelBackend(RecordingRedisBackend, SentinelBackend):
    """:class:`RecordingRedisBackend` on Celery's Sentinel backend, which finds the master
    through the sentinels (``sentinel://`` URLs) and follows a failover."""
