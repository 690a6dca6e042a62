"""The base class of every task on a Forwarder app: a schedule's retry policy, applied with
Celery's own retry.

A schedule's ``retries: {limit, backoff, maxBackoff}`` travels on each of its runs' messages
as the header ``forwarder_retry`` (:data:`~forwarder_worker.names.HEADER_RETRY`), because the
same task serves many schedules with different policies and Celery's retry options
(``autoretry_for``, ``max_retries``, ``retry_backoff``) are the task's, fixed where it is
defined. So the app's task class (Celery's ``task_cls``: every ``@shared_task`` and
``@app.task`` on the app is built on it) reads the header when the task raises, and calls
``Task.retry`` from within the task, as a task would itself: the same run id, the next
attempt's message sent by Celery with its headers, time limits and ``retries + 1``, the run
recorded ``RETRY`` by the worker's receivers and counted active by Forbid and Replace. The
delay is Celery's exponential backoff (``get_exponential_backoff_interval``, no jitter).

Not retried: the task's own retries and other task predicates (``Retry``, ``Ignore``,
``Reject`` pass through, so a task's ``autoretry_for`` still works), the exceptions the task
declares expected (``throws``, e.g. ``forwarder.http``'s ``TargetNotAllowed``), a hard time
limit (the process is killed, there is nothing to call), and a call outside a worker.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import TaskPredicate
from celery.utils.time import get_exponential_backoff_interval

from forwarder_worker.names import HEADER_RETRY


def retry_delay(policy: dict[str, Any], retries: int) -> int:
    """Seconds before the attempt after ``retries`` retries: ``backoff`` doubling per retry,
    at most ``maxBackoff``."""
    return int(
        get_exponential_backoff_interval(
            factor=int(policy["backoff"]),
            retries=retries,
            maximum=int(policy["maxBackoff"]),
            full_jitter=False,
        )
    )


class ForwarderTask(Task):
    """Celery's Task, retrying a failed run as its schedule's retry policy says."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            return super().__call__(*args, **kwargs)
        # In a worker the tracer has pushed this run's request already; Task.__call__ would
        # push a bare one (no id, no headers) over it, so the body is called as Celery calls
        # a task without a custom __call__.
        try:
            return self.run(*args, **kwargs)
        except TaskPredicate:
            raise
        except Exception as exc:
            policy = (request.headers or {}).get(HEADER_RETRY)
            retries = request.retries or 0
            expected = tuple(self.throws or ())
            if (
                not isinstance(policy, dict)
                or retries >= int(policy.get("limit", 0))
                or (expected and isinstance(exc, expected))
            ):
                raise
            try:
                # expires=None: the starting deadline is for the first attempt; a retry is
                # not a late firing (Celery's retry would keep the first message's expiry).
                raise self.retry(
                    exc=exc,
                    countdown=retry_delay(policy, retries),
                    max_retries=int(policy["limit"]),
                    expires=None,
                ) from exc
            finally:
                # Task.retry leaves its max_retries on the task object, where autoretry_for
                # would read it on the task's next run in this process.
                self.__dict__.pop("override_max_retries", None)
