"""The workers' result backend: Celery's Redis backend, storing a run's SUCCESS record in the
same round trip as its result.

Celery stores a task's result (SET and PUBLISH of ``celery-task-meta-<id>``) before it sends
``task_success``, and our receiver then wrote the run record's final transition in a round
trip of its own (:mod:`forwarder_worker.recording.signals`): a client waiting on the run
record (the api's long poll) heard the end one round trip after a client waiting on Celery's
result. Here the transition runs in the result's own transaction (MULTI: SET, PUBLISH, the
transition script), and the run log remembers it, so the ``task_success`` receiver, asking
the same run log, writes nothing more.

If the script fails, the result is still stored as Celery stores it and the receiver records
the run as before. Only SUCCESS takes this path; failures, retries and revocations are
recorded by the receivers, as they have tracebacks or other states to tell.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend

from forwarder_worker.core import core_of
from forwarder_worker.runs.records import RunLog

_local = threading.local()


class RecordingRedisBackend(RedisBackend):
    """Celery's Redis result backend; a SUCCESS also writes the run record, in one round
    trip."""

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        name = getattr(request, "task", None)
        core = core_of(self.app)
        if state != states.SUCCESS or not isinstance(name, str) or core is None:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        _local.pending = (core.runs, task_id, name, result)
        try:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        finally:
            _local.pending = None

    def _set(self, key: str, value: Any, expires: Any = None) -> None:
        pending: tuple[RunLog, str, str, Any] | None = getattr(_local, "pending", None)
        if pending is None:
            super()._set(key, value, expires)
            return
        runs, task_id, name, result = pending
        if expires is None:
            expires = self.expires
        with self.client.pipeline() as pipe:
            if expires:
                pipe.set(key, value, ex=expires)
            else:
                pipe.set(key, value)
            pipe.publish(key, value)
            runs.success_with_result(pipe, task_id, name, result)
            replies = pipe.execute(raise_on_error=False)
        for reply in replies[:-1]:
            if isinstance(reply, Exception):
                raise reply
        if not isinstance(replies[-1], Exception):
            runs.note_with_result(task_id)


class RecordingSentinelBackend(RecordingRedisBackend, SentinelBackend):
    """:class:`RecordingRedisBackend` on Celery's Sentinel backend, which finds the master
    through the sentinels (``sentinel://`` URLs) and follows a failover."""
