"""The workers' result backend: Celery's Redis backend, writing a run's STARTED and SUCCESS
transitions in the same round trip as Celery's STARTED state and its result.

Celery stores a task's STARTED state (``task_track_started``) and its result each in two
round trips of its own: a GET of the stored state (it never stores over a SUCCESS, so a lost
worker's late run cannot overwrite a result), then SET and PUBLISH of
``celery-task-meta-<id>`` in one MULTI; our receivers (:mod:`forwarder_worker.recording.signals`)
wrote the run record's STARTED and SUCCESS transitions in two more. Here one script does all
of it atomically (:meth:`~forwarder_worker.runs.records.RunLog.write_with_result`): Celery's
check, its SET and PUBLISH, then the transitions:

* STARTED: the ``task_prerun`` receiver, which runs just before Celery stores STARTED,
  leaves the transition with the run log (:meth:`~forwarder_worker.runs.records.RunLog.defer`)
  when Celery is about to store it, and this backend takes it;
* SUCCESS: written with the result, and the run log remembers it, so the ``task_success``
  receiver, asking the same run log, writes nothing more.

This re-implements Celery's ``BaseKeyValueStoreBackend._store_result`` (its check moved into
the script) for these two states only: saving its GET was a sixth of a pool process's CPU per
run. Celery's own is kept for every other store; tests/worker/test_worker_result_backend.py
fails when Celery's changes. If the script fails (an error, not a lost connection, which Celery's
retry policy handles), the state is stored as Celery stores it, a STARTED goes back to the
run log (the run's next transition writes it first), and a SUCCESS is written by its
receiver. Failures, retries and revocations are recorded by the receivers, as they have
tracebacks or other states to tell.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, NamedTuple

import redis
from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

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
    trip of Celery's STARTED state and result."""

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
        # Celery's _store_result, but for its GET of the stored state: the script checks it.
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)  # type: ignore[no-untyped-call]
        _local.pending = pending
        _local.sent = False
        try:
            self._set_with_state(self.get_key_for_task(task_id), self.encode(meta), state)
        except BackendStoreError as ex:
            raise BackendStoreError(str(ex), state=state, task_id=task_id) from ex
        finally:
            if not _local.sent and pending.started is not None:
                # Not written (a SUCCESS was stored, or the store failed): the run's next
                # transition writes it first.
                pending.runs.defer(pending.started)
            _local.pending = None
        return result

    def _set(self, key: str, value: Any, expires: Any = None) -> None:
        pending: _Pending | None = getattr(_local, "pending", None)
        if pending is None:
            super()._set(key, value, expires)
            return
        if expires is None:
            expires = self.expires
        writes = [w for w in (pending.started, pending.success) if w is not None]
        try:
            written = pending.runs.write_with_result(self.client, key, value, expires, writes)
        except redis.ResponseError:
            # The script failed (redis-py loads one Redis lost by itself): the state is stored
            # as Celery stores it; the STARTED goes back to the run log (_store_result) and the
            # SUCCESS is left to its receiver, as neither was noted written.
            log.exception("run %s: recorded apart from its state", writes[0].run_id)
            super()._set(key, value, expires)
            return
        if written:
            _local.sent = True
            if pending.success is not None:
                pending.runs.note_with_result(pending.success.run_id)


class RecordingSentinelBackend(RecordingRedisBackend, SentinelBackend):
    """:class:`RecordingRedisBackend` on Celery's Sentinel backend, which finds the master
    through the sentinels (``sentinel://`` URLs) and follows a failover."""
