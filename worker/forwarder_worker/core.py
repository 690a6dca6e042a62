"""The factory: one :class:`Core` per process, holding the Celery app, the Redis clients,
the schedule store, the run log, the dispatcher (and its backfills) and the scheduler's
metrics.

Every process builds its parts here, once, from its settings: beat and the workers through
the Celery app (``celery -A forwarder_worker.app``), the operator into kopf's memo, the api
into its lifespan, local mode's folder source and ``forwarder status`` at their start. So a
store or a run log is built in one place, with one set of keys, scripts and limits, and the
parts of a process share one connection pool.

Building a Core connects to nothing: Redis is reached on first use, so a process starts
while Redis is still coming up.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio
from celery import Celery

from forwarder_worker import broker_fixes
from forwarder_worker._redis.clients import (
    async_redis_client,
    celery_transport_options,
    redis_client,
    ssl_options,
)
from forwarder_worker._redis.keys import Keys
from forwarder_worker._redis.scripts import AsyncScripts, RunLimits, Scripts
from forwarder_worker.dispatch.backfill import Backfiller
from forwarder_worker.dispatch.dispatcher import STALE_RUN_GRACE, Dispatcher
from forwarder_worker.dispatch.metrics import SchedulerMetrics
from forwarder_worker.queues import QueueLengths
from forwarder_worker.runs.records import AsyncRunLog, RunLog
from forwarder_worker.schedules.store import ScheduleStore
from forwarder_worker.settings import Settings
from forwarder_worker.workers import WorkerHeartbeat, WorkerRegistry

BUILTIN_TASK_MODULES = (
    "forwarder_worker.tasks.ping",
    "forwarder_worker.tasks.http",
    "forwarder_worker.tasks.history",
)
# Imported by Celery with the task modules (the worker imports them as it starts), which
# connects the receivers that record every run: importing the core itself connects nothing.
RECORDING_MODULES = ("forwarder_worker.recording.signals",)
# Celery's "<backend class>+<url>" form: its Redis backend, recording SUCCESS with the result
# (its Sentinel backend's twin when the master is found through sentinels).
RESULT_BACKEND = "forwarder_worker.recording.result_backend:RecordingRedisBackend"
SENTINEL_RESULT_BACKEND = "forwarder_worker.recording.result_backend:RecordingSentinelBackend"
SCHEDULER = "forwarder_worker.beat.scheduler:ForwarderScheduler"
# Every task's base class: applies a schedule's retry policy with Celery's own retry.
TASK_CLASS = "forwarder_worker.tasks.base:ForwarderTask"


# How many times a worker tries again to store a run's end while Redis is unreachable (see
# result_backend_always_retry below).
RESULT_STORE_RETRIES = 20


class ForwarderCelery(Celery):
    """The Celery app of every Forwarder process: JSON only, late acks, events and limits,
    and the :class:`Core` it belongs to.

    Why the Core rides on the app: Celery hands the app, and nothing else, to what it builds
    and calls: the beat scheduler (``ForwarderScheduler(app)``), the result backend
    (``backend.app``), each task (``self.app``) and the signal receivers (``sender.app``). So
    the app is where they find the clients, store and run log built once for the process. A
    Celery subclass that declares its ``core`` (typed, set as the app is built, and
    ``isinstance`` telling a Forwarder app from any other) replaces the settings that used
    to be stuck onto a plain Celery app and read back with ``getattr``, falling back to the
    environment when missing. Not taken: a key in ``app.conf`` (Celery's plain settings,
    which ``celery inspect conf`` and Flower serialise) and a registry keyed by app (a module
    global that must hold the tests' many apps weakly, and a lookup that can miss).
    """

    def __init__(self, core: Core, conf: Mapping[str, Any]) -> None:
        settings = core.settings
        url = settings.celery_redis_url
        backend = SENTINEL_RESULT_BACKEND if settings.sentinel_mode else RESULT_BACKEND
        # In Sentinel mode: kombu's and Celery's sentinel:// URLs, plus master_name and how
        # to reach the sentinels in both transport options.
        sentinel = celery_transport_options(settings)
        super().__init__(
            "forwarder",
            broker=url,
            backend=f"{backend}+{url}",
            set_as_current=False,
            task_cls=TASK_CLASS,
        )
        self.core = core
        # Each worker keeps itself in the core's WorkerRegistry while it runs.
        self.steps["worker"].add(WorkerHeartbeat)
        self.conf.update(
            # JSON only: a pickled message is refused, never executed.
            task_serializer="json",
            result_serializer="json",
            event_serializer="json",
            accept_content=["json"],
            result_accept_content=["json"],
            # A task is acknowledged after it ran, and redelivered if its worker died mid-run.
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            worker_prefetch_multiplier=1,
            # Flower needs events; "started" lets clients tell queued from running.
            worker_send_task_events=True,
            task_send_sent_event=True,
            task_track_started=True,
            result_extended=True,
            result_expires=settings.result_expires,
            task_time_limit=settings.task_time_limit,
            task_soft_time_limit=min(settings.task_soft_time_limit, settings.task_time_limit),
            task_default_queue="default",
            task_create_missing_queues=True,
            # A message unacked for longer than this is redelivered, so it must outlast any run.
            broker_transport_options={
                "visibility_timeout": settings.task_time_limit * 2 + 60,
                "global_keyprefix": settings.key_prefix,
                **sentinel,
            },
            result_backend_transport_options={"global_keyprefix": settings.key_prefix, **sentinel},
            broker_connection_retry_on_startup=True,
            # A run executing when the worker loses Redis finishes where it runs; its ack may
            # fail, and then the message is redelivered after the visibility timeout (at least
            # once). Celery's cancel-on-loss instead terminated it, recorded it REVOKED and
            # acknowledged its message once Redis was back, so it never ran again
            # (tests/faults/test_faults_redis_restart.py, found by the chaos soak).
            worker_cancel_long_running_tasks_on_connection_loss=False,
            # A run that ends while Redis is away (a restart, a Sentinel failover) waits for it
            # to store its result: Celery retries only the result's SET by default, not the
            # read before it, so such a run was recorded FAILURE with a ConnectionError.
            # Exponential backoff from 10 ms up to 10 s between tries, about a minute in all.
            result_backend_always_retry=True,
            result_backend_max_retries=RESULT_STORE_RETRIES,
            beat_scheduler=SCHEDULER,
            beat_max_loop_interval=settings.beat_max_loop_interval,
            include=[*BUILTIN_TASK_MODULES, *RECORDING_MODULES, *settings.task_modules],
        )
        tls = ssl_options(settings)
        if tls is not None:
            self.conf.broker_use_ssl = tls
            self.conf.redis_backend_use_ssl = tls
        self.conf.update(conf)


def core_of(app: object) -> Core | None:
    """The Core of ``app``, or None when it is not a Forwarder app."""
    return app.core if isinstance(app, ForwarderCelery) else None


def require_core(app: object) -> Core:
    """The Core of ``app``; raises for an app :meth:`Core.from_settings` did not build."""
    core = core_of(app)
    if core is None:
        raise RuntimeError(f"{app!r} is not a Forwarder app (build it with Core.from_settings)")
    return core


class Core:
    """One process's Forwarder parts, built once from settings (see the module docstring).

    Build it with :meth:`from_settings`. The blocking client (beat's wait) and the asyncio
    client and scripts (the api's event loop) are built on first use, by the processes that
    use them only.
    """

    def __init__(self, settings: Settings, conf: Mapping[str, Any]) -> None:
        broker_fixes.install()
        self.settings = settings
        self.app = ForwarderCelery(self, conf)
        self.keys = Keys(settings.key_prefix)
        self.client = redis_client(settings)
        self.limits = RunLimits(
            ttl=settings.result_expires,
            global_limit=settings.global_history_limit,
            schedule_limit=settings.run_history_limit,
            duration_tasks=settings.duration_task_limit,
        )
        self.scripts = Scripts(self.client, self.keys, self.limits)
        self.store = ScheduleStore(self.client, self.keys, self.scripts)
        self.runs = RunLog(
            self.client, self.keys, self.scripts, result_limit=settings.result_max_chars
        )
        self.metrics = SchedulerMetrics(self.client, self.keys)
        self.workers = WorkerRegistry(self.client, self.keys)
        self.dispatcher = Dispatcher(
            self.app,
            self.client,
            self.runs,
            self.metrics,
            stale_after=settings.task_time_limit + STALE_RUN_GRACE,
            time_limit=settings.task_time_limit,
        )
        # Backfill reaches back as far as run records live: they tell which slots ran.
        self.backfill = Backfiller(self.store, self.dispatcher, horizon=settings.result_expires)

    @classmethod
    def from_settings(cls, settings: Settings, *, conf: Mapping[str, Any] | None = None) -> Core:
        """A Core for ``settings``; ``conf`` overrides settings of its Celery app (the api
        swaps the result backend and the broker transport)."""
        return cls(settings, conf or {})

    @functools.cached_property
    def waiter(self) -> redis.Redis:
        """A client for blocking reads (no read timeout): beat's wait for a change."""
        return redis_client(self.settings, blocking=True)

    @functools.cached_property
    def async_client(self) -> redis.asyncio.Redis:
        """The asyncio client of code on an event loop (the api's reads, waits and submits)."""
        return async_redis_client(self.settings)

    @functools.cached_property
    def async_runs(self) -> AsyncRunLog:
        """The run log on :attr:`async_client` (the api's reads, waits and submits)."""
        scripts = AsyncScripts(self.async_client, self.keys, self.limits)
        return AsyncRunLog(self.async_client, self.keys, scripts)

    @functools.cached_property
    def queue_lengths(self) -> QueueLengths:
        """The lengths of the app's queues, named as its broker transport names them (the
        api's ``/metrics``)."""
        return QueueLengths(self.app, self.client)

    def registered_task_names(self) -> set[str]:
        """Names of the tasks the app's modules register, Celery's internal ones excluded."""
        self.app.loader.import_default_modules()
        return {name for name in self.app.tasks if not name.startswith("celery.")}

    def close(self) -> None:
        """Close the synchronous clients and the app's connections."""
        self.client.close()
        if "waiter" in self.__dict__:
            self.waiter.close()
        self.app.close()

    async def aclose(self) -> None:
        """:meth:`close`, and the asyncio client if it was built."""
        if "async_client" in self.__dict__:
            await self.async_client.aclose()
        self.close()
