"""The objects whose reconcile failed on Redis, waiting to be tried again with backoff.

kopf retries only its change-detecting handlers; the operator reconciles from watch events
(:mod:`forwarder_operator.reconciler`), so a failure there is remembered here and the
operator's loop (:mod:`forwarder_operator.loops`) tries the object again, 1 s after the
first failure, doubling to 60 s, without a retry storm while Redis is down.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from forwarder_worker.names import MAX_BACKOFF

from forwarder_operator.resource import ObjectMeta


def backoff(attempt: int) -> float:
    """Seconds to wait before try ``attempt + 1``: 1 s after the first failure, doubling to
    :data:`~forwarder_worker.names.MAX_BACKOFF`."""
    return float(min(2**attempt, MAX_BACKOFF))


@dataclass
class Retry:
    """One object waiting for Redis: which one, and when to try again."""

    metadata: ObjectMeta
    """As last seen; the retry reads the object afresh and uses only its name and uid."""
    attempt: int
    at: float


class RetryQueue:
    """Objects whose reconcile failed on Redis, with backoff per object (1 s, doubling to
    60 s). Thread-safe: kopf's handler threads add, the operator's loop drains.

    While an object waits here its watch events are ignored: the retry reads the object
    afresh, so it acts on whatever the object has become by then.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], Retry] = {}

    def add(self, metadata: ObjectMeta) -> float:
        """Queue the object (again); returns the delay before its next attempt."""
        key = (metadata.namespace, metadata.name)
        with self._lock:
            before = self._items.get(key)
            attempt = 0 if before is None else before.attempt + 1
            delay = backoff(attempt)
            self._items[key] = Retry(metadata, attempt, time.monotonic() + delay)
        return delay

    def pending(self, namespace: str, name: str) -> bool:
        """Whether the object waits for a retry."""
        with self._lock:
            return (namespace, name) in self._items

    def due(self) -> list[Retry]:
        """The retries whose time has come (they stay queued until :meth:`done`)."""
        now = time.monotonic()
        with self._lock:
            return [item for item in self._items.values() if item.at <= now]

    def postpone(self, retry: Retry) -> float:
        """Try ``retry`` again later, after a longer wait; returns the wait."""
        return self.add(retry.metadata)

    def done(self, namespace: str, name: str) -> None:
        """The object is in step (or gone): stop retrying it."""
        with self._lock:
            self._items.pop((namespace, name), None)
