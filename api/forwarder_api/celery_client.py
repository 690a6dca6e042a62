"""The API's Celery app: the core's app, with a result backend that never subscribes on send.

Celery's Redis result backend subscribes to a task's result channel whenever the task is
sent, so that a later ``AsyncResult.get()`` hears the result by pub/sub; the subscription is
dropped when the ``AsyncResult`` is garbage-collected. The API never waits that way (it answers
from run records, and ``GET /runs/{id}?wait=`` listens for the run record's own announcement),
so every submission would pay for a SUBSCRIBE and an UNSUBSCRIBE whose confirmations nobody
reads, piling up on the backend's pub/sub connection. Results are still stored by the workers
and read here with a plain GET (``AsyncResult(id).result``).

:class:`ReusedClientTransport` is kombu's Redis transport whose channels publish through one
Redis client object each, rather than building a new one (a ``redis.Redis`` with its
response callbacks and retry policy) for every publish. :class:`QueueDeclarations` declares
each queue a submission goes to once per process, so the
publish itself skips kombu's per-message declaration check, as beat's dispatcher does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.backends.redis import RedisBackend, SentinelBackend
from forwarder_worker import Settings
from kombu.transport import redis as kombu_redis


class SubmitOnlyRedisBackend(RedisBackend):
    """Celery's Redis result backend, minus the per-send subscription."""

    def on_task_call(self, producer: Any, task_id: str) -> dict[str, Any]:
        return {}


class SubmitOnlySentinelBackend(SubmitOnlyRedisBackend, SentinelBackend):
    """:class:`SubmitOnlyRedisBackend` on Celery's Sentinel backend (Sentinel mode)."""


class ReusedClientChannel(kombu_redis.Channel):
    """kombu's Redis channel, publishing through one client object instead of one per call.

    A channel is used by one thread at a time (producers come from a pool), and a client
    object holds no connection of its own: each command borrows one from the channel's
    connection pool, as before. The client is rebuilt if the channel's pool ever changes.
    """

    _reused: tuple[Any, Any] | None = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        if self._reused is None or self._reused[0] is not pool:
            self._reused = (pool, self._create_client())  # type: ignore[no-untyped-call]
        yield self._reused[1]


class ReusedClientTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`ReusedClientChannel` channels."""

    Channel = ReusedClientChannel


def submit_conf(settings: Settings) -> dict[str, Any]:
    """The api's settings of the core's Celery app (``Core.from_settings(conf=...)``):
    :class:`SubmitOnlyRedisBackend` (:class:`SubmitOnlySentinelBackend` with sentinels) and,
    on a ``redis://`` or ``rediss://`` broker, :class:`ReusedClientTransport` (kombu's
    sentinel transport keeps its own channels)."""
    cls = SubmitOnlySentinelBackend if settings.sentinel_mode else SubmitOnlyRedisBackend
    # Celery's "<backend class>+<url>" form: this class, on the configured Redis.
    backend = f"{cls.__module__}:{cls.__qualname__}"
    conf: dict[str, Any] = {"result_backend": f"{backend}+{settings.celery_redis_url}"}
    if not settings.sentinel_mode and settings.celery_redis_url.startswith(
        ("redis://", "rediss://")
    ):
        transport = ReusedClientTransport
        conf["broker_transport"] = f"{transport.__module__}:{transport.__qualname__}"
    return conf


class QueueDeclarations:
    """Queues this process has declared on the broker: each is declared once, then messages
    are published with ``declare=[]``.

    ``send_task`` otherwise asks kombu to declare the message's queue on every publish; kombu
    remembers declarations per connection, but checking that memory (binding and copying the
    queue entity) was a large share of a submit's publish. Declaring a queue on Redis records
    its exchange binding, which outlives this process; a message needs none to reach a queue
    of the default direct exchange (Celery sends those straight to the queue's list).
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._declared: set[str] = set()
        self._lock = threading.Lock()

    def ensure(self, producer: Any, name: str) -> None:
        """Declare queue ``name`` through ``producer`` unless this process already has."""
        if name in self._declared:
            return
        with self._lock:
            if name in self._declared:
                return
            producer.maybe_declare(self.app.amqp.queues[name])
            self._declared.add(name)

    @property
    def declared(self) -> frozenset[str]:
        """The queues declared so far."""
        return frozenset(self._declared)
