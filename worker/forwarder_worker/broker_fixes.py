"""A fix for kombu's Redis transport that keeps a worker alive when Redis drops mid-task.

Celery 5.7's consumer, on losing the broker, first ``collect()``s the connection (which
releases its transport: ``transport.client = None``) and then ``close()``s it. A channel that
still holds unacknowledged deliveries (a running task, with ``task_acks_late``) tries on close
to give them back, which needs a Redis pool; building one reads ``transport.client`` and
raises ``AttributeError``. kombu only ignores *connection* errors while closing, so the
AttributeError ends the worker ("Unrecoverable error ... 'hostname'"), seen in our Redis
restart fault test. kombu 5.7.0 and Celery 5.7.0 are the latest releases; nothing upstream
fixes it yet.

The fix: building a pool for a released transport raises the transport's own
``ConnectionError`` instead. kombu then treats it as the lost connection it is: the worker
reconnects, and the deliveries stay in Redis's unacked index, from which kombu redelivers
them after the visibility timeout (at-least-once, as when a restore fails for any reason).
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_MARK = "_forwarder_released_transport_fix"


def install() -> None:
    """Patch ``kombu.transport.redis.Channel._connparams`` once per process."""
    original = kombu_redis.Channel._connparams
    if getattr(original, _MARK, False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was released")
        return original(self, asynchronous=asynchronous)  # type: ignore[no-untyped-call]

    setattr(_connparams, _MARK, True)
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
