"""User tasks that tests register through FORWARDER_TASK_MODULES, as a deployment would."""

from __future__ import annotations

import time
from typing import Any

from celery import Task, shared_task


@shared_task(name="tests.sleep", bind=True)
def sleep(self: Task, seconds: float = 1.0) -> dict[str, Any]:
    """Run for ``seconds`` (for overlap and revoke tests)."""
    time.sleep(seconds)
    return {"slept": seconds, "id": self.request.id}


@shared_task(name="tests.fail")
def fail(message: str = "boom") -> None:
    """Always fail with ValueError(message)."""
    raise ValueError(message)


@shared_task(name="tests.flaky", bind=True, max_retries=2, default_retry_delay=0.2)
def flaky(self: Task, failures: int = 1) -> str:
    """Fail ``failures`` times with a retry, then succeed."""
    if self.request.retries < failures:
        raise self.retry(exc=RuntimeError(f"attempt {self.request.retries + 1} failed"))
    return f"ok after {self.request.retries} retries"


@shared_task(name="tests.fail_first", bind=True)
def fail_first(self: Task, failures: int = 1, sleep: float = 0.0) -> dict[str, Any]:
    """Fail the first ``failures`` attempts with ValueError, each after ``sleep`` seconds,
    then succeed: for a schedule's retry policy (the task has none of its own)."""
    time.sleep(sleep)
    if self.request.retries < failures:
        raise ValueError(f"attempt {self.request.retries + 1} failed")
    return {"attempt": self.request.retries + 1}
