"""The objects every request needs, built once per app from its settings.

The same container serves the lifespan (which closes it) and the dependencies in
:mod:`forwarder_api.deps`, so tests get a fresh set for each ``create_app(settings)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from forwarder_worker._redis.clients import async_redis_client, redis_client
from forwarder_worker.dispatch.dispatcher import Dispatcher
from forwarder_worker.dispatch.metrics import SchedulerMetrics
from forwarder_worker.runs.records import RunLog
from forwarder_worker.schedules.store import ScheduleStore

from forwarder_api.auth import TokenSet
from forwarder_api.catalog import TaskCatalog
from forwarder_api.celery_client import QueueDeclarations, create_submit_app
from forwarder_api.flower import FlowerClient
from forwarder_api.kube_schedules import KubeSchedules
from forwarder_api.local_schedules import LocalSchedules
from forwarder_api.metrics import ApiMetrics
from forwarder_api.run_watch import RunWatch
from forwarder_api.schedules import ScheduleBackend
from forwarder_api.settings import ApiSettings
from forwarder_api.submitter import Submitter


@dataclass
class Services:
    """Clients and services of one app."""

    settings: ApiSettings
    celery: Celery
    queues: QueueDeclarations
    redis: redis.Redis
    store: ScheduleStore
    runs: RunLog
    watch: RunWatch
    submitter: Submitter
    catalog: TaskCatalog
    schedules: ScheduleBackend
    flower: FlowerClient
    metrics: ApiMetrics
    tokens: TokenSet

    @classmethod
    def build(cls, settings: ApiSettings) -> Services:
        """Everything from ``settings``; nothing connects until first used."""
        celery = create_submit_app(settings)
        client = redis_client(settings)
        prefix = settings.key_prefix
        store = ScheduleStore(client, prefix)
        runs = RunLog(
            client,
            prefix,
            ttl=settings.result_expires,
            global_limit=settings.global_history_limit,
            schedule_limit=settings.run_history_limit,
            result_limit=settings.result_max_chars,
        )
        catalog = TaskCatalog(celery, settings)
        queues = QueueDeclarations(celery)
        # One asyncio client (and pool) for the event loop's reads, waits and submissions.
        async_client = async_redis_client(settings)
        schedules: ScheduleBackend
        if settings.schedules_mode == "kubernetes":
            schedules = KubeSchedules(settings, catalog.known)
        else:
            dispatcher = Dispatcher(celery, client, runs, prefix)
            schedules = LocalSchedules(
                settings.schedules_dir, store, runs, dispatcher, catalog.known
            )
        watch = RunWatch(async_client, runs)
        return cls(
            settings=settings,
            celery=celery,
            queues=queues,
            redis=client,
            store=store,
            runs=runs,
            watch=watch,
            submitter=Submitter(celery, runs, async_client, catalog, queues),
            catalog=catalog,
            schedules=schedules,
            flower=FlowerClient(settings),
            metrics=ApiMetrics(store, SchedulerMetrics(client, prefix), lambda: watch.waiting),
            tokens=TokenSet(settings),
        )

    async def aclose(self) -> None:
        """Close connections (the lifespan's shutdown)."""
        await self.flower.aclose()
        await self.watch.aclose()
        self.redis.close()
        self.celery.close()
