"""The workers' result backend: Celery's Redis backend, storing a run's SUCCESS record in the
same round trip as its result.

Celery stores a task's result (SET and PUBLISH of ``celery-task-meta-<id>``) before it sends
``task_success``, and our receiver then wrote the run record's final transition in a round
trip of its own (:mod:`forwarder_worker.recording.signals`): a client waiting on the run record (the
api's long poll) heard the end one round trip after a client waiting on Celery's result.
Here the transition runs in the result's own transaction (MULTI: SET, PUBLISH, the
transition script), and the ``task_success`` receiver skips a run recorded so.

The transition script is sent whole (EVAL; Redis caches it by digest): the backend's client
prefixes keys for Celery's ``global_keyprefix``, only the first key of an EVALSHA, whereas
EVAL is left alone and the run-record keys are already complete. If the script fails, the
result is still stored as Celery stores it and the receiver records the run as before.
Only SUCCESS takes this path; failures, retries and revocations are recorded by the
receivers, as they have tracebacks or other states to tell.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend

from forwarder_worker.runs.records import TRANSITION_SCRIPT, RunLog, bounded

_local = threading.local()
# Runs whose SUCCESS this process recorded with their result; the task_success receiver
# takes each id out (and writes nothing) right after.
_recorded: set[str] = set()
_recorded_lock = threading.Lock()


def recorded_with_result(task_id: str) -> bool:
    """Whether run ``task_id``'s SUCCESS was recorded with its result (asked once: the id
    is forgotten)."""
    with _recorded_lock:
        if task_id in _recorded:
            _recorded.discard(task_id)
            return True
    return False


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
        if state != states.SUCCESS or not isinstance(name, str) or not self._forwarder():
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        _local.pending = (task_id, name, result)
        try:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        finally:
            _local.pending = None

    def _forwarder(self) -> bool:
        return getattr(self.app, "forwarder_settings", None) is not None

    def _set(self, key: str, value: Any, expires: Any = None) -> None:
        pending = getattr(_local, "pending", None)
        if pending is None:
            super()._set(key, value, expires)
            return
        from forwarder_worker.recording.signals import run_log  # signals imports this module

        task_id, name, result = pending
        log: RunLog = run_log(self.app)
        keys, args = log.transition_call(
            task_id,
            "SUCCESS",
            task=name,
            finished=time.time(),
            result=bounded(result, log.result_limit),
        )
        if expires is None:
            expires = self.expires
        with self.client.pipeline() as pipe:
            if expires:
                pipe.set(key, value, ex=expires)
            else:
                pipe.set(key, value)
            pipe.publish(key, value)
            pipe.execute_command("EVAL", TRANSITION_SCRIPT, len(keys), *keys, *args)
            replies = pipe.execute(raise_on_error=False)
        for reply in replies[:-1]:
            if isinstance(reply, Exception):
                raise reply
        if not isinstance(replies[-1], Exception):
            with _recorded_lock:
                _recorded.add(task_id)
