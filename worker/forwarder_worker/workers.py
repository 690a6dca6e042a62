"""Workers alive, as each announces itself in Redis: what ``forwarder_workers`` counts.

Celery's own view of its workers (``inspect().ping()``, Flower's event stream) needs a
broadcast and a wait for replies, too slow and too costly for a scrape every few seconds.
So each worker keeps its hostname in one sorted set, scored by its last heartbeat: a bootstep
writes it as the worker starts, again every :data:`HEARTBEAT_SECONDS` from the worker's own
timer (one ZADD, no thread of its own), and removes it as the worker stops. A worker killed
without a stop ages out: a reader counts only those seen within :data:`ALIVE_WITHIN` seconds,
and the reader and each heartbeat prune the rest.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import bootsteps

from forwarder_worker._redis.keys import Keys

log = logging.getLogger("forwarder.worker")

HEARTBEAT_SECONDS = 10.0
"""Seconds between a worker's announcements."""
ALIVE_WITHIN = 3 * HEARTBEAT_SECONDS
"""A worker not heard of for this long is taken for dead (two missed heartbeats tolerated)."""


class WorkerRegistry:
    """The workers' heartbeats (a zset of hostname -> epoch seconds of the last one)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.key = keys.workers

    def beat(self, hostname: str) -> None:
        """Worker ``hostname`` is alive now; the workers dead for long are pruned in the same
        round trip, so the set stays bounded even when nothing reads it (no api scrapes)."""
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.key, {hostname: now})
            pipe.zremrangebyscore(self.key, "-inf", f"({now - ALIVE_WITHIN!r}")
            pipe.execute()

    def leave(self, hostname: str) -> None:
        """Worker ``hostname`` is stopping."""
        self.client.zrem(self.key, hostname)

    def alive(self, within: float = ALIVE_WITHIN) -> int:
        """How many workers announced themselves in the last ``within`` seconds; older
        entries (workers that died without leaving) are pruned in the same round trip."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self.key, "-inf", f"({time.time() - within!r}")
            pipe.zcard(self.key)
            _, count = pipe.execute()
        return int(count)


class WorkerHeartbeat(bootsteps.StartStopStep):
    """The worker bootstep that keeps its hostname in the :class:`WorkerRegistry` (added
    to every Forwarder app's worker blueprint by :class:`~forwarder_worker.core.ForwarderCelery`).
    """

    # The worker's timer runs the heartbeat: in its event loop under prefork, no new thread.
    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer_entry: Any = None

    def start(self, parent: Any) -> None:
        registry: WorkerRegistry = parent.app.core.workers
        hostname: str = parent.hostname
        self._beat(registry, hostname)
        self._timer_entry = parent.timer.call_repeatedly(
            HEARTBEAT_SECONDS, self._beat, (registry, hostname), priority=10
        )

    def stop(self, parent: Any) -> None:
        if self._timer_entry is not None:
            self._timer_entry.cancel()
            self._timer_entry = None
        try:
            parent.app.core.workers.leave(parent.hostname)
        except redis.RedisError as exc:
            # A worker stops when Redis is gone too; its entry then ages out.
            log.warning("worker registry: could not remove %s: %s", parent.hostname, exc)

    def terminate(self, parent: Any) -> None:
        self.stop(parent)

    @staticmethod
    def _beat(registry: WorkerRegistry, hostname: str) -> None:
        try:
            registry.beat(hostname)
        except redis.RedisError as exc:
            # Redis away for a moment: the next heartbeat announces the worker again.
            log.warning("worker registry: heartbeat of %s failed: %s", hostname, exc)
