"""``forwarder.ping``: a diagnostic task that answers with the worker's name and time.

Task names are explicit and stable, because schedules and API clients refer to them by name.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from celery import Task, shared_task


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
