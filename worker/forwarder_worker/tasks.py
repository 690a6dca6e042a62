"""Built-in tasks: ``forwarder.ping`` for diagnostics and ``forwarder.http`` to forward a request.

Names are explicit and stable, because schedules and API clients refer to them by name.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
from celery import Task, shared_task

from forwarder_worker.http_forward import (
    TargetNotAllowed,
    forward_request,
)
from forwarder_worker.settings import settings_of


@shared_task(name="forwarder.ping", bind=True)
def ping(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Answer with the worker's name and time, echoing what it was given."""
    return {
        "pong": True,
        "worker": self.request.hostname or socket.gethostname(),
        "time": time.time(),
        "args": list(args),
        "kwargs": kwargs,
    }


@shared_task(
    name="forwarder.http",
    bind=True,
    autoretry_for=(httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError),
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=3,
    throws=(TargetNotAllowed,),
)
def http(
    self: Task,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    json: Any = None,
    body: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Forward one HTTP request to an allow-listed target and return status, headers and a
    bounded body. Connection errors are retried with backoff; anything else fails the run."""
    settings = settings_of(self.app)
    return forward_request(
        url,
        method=method,
        headers=headers,
        json=json,
        body=body,
        timeout=timeout,
        allow=settings.http_allow,
        max_body=settings.http_max_body_bytes,
    )
