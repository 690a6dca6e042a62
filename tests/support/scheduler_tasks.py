"""Tasks the scheduler tests register (FORWARDER_TASK_MODULES=...,support.scheduler_tasks)."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

HEADERS = ("forwarder_schedule", "forwarder_uid", "forwarder_slot")


@shared_task(name="tests.sched.headers", bind=True)
def headers(self: Task) -> dict[str, Any]:
    """Return the scheduling headers exactly as the running task sees them."""
    request_headers = self.request.headers or {}
    return {
        name: getattr(self.request, name, None) or request_headers.get(name) for name in HEADERS
    }
