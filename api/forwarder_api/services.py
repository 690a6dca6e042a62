"""The objects every request needs, built once per app from its settings.

The same container serves the lifespan (which closes it) and the dependencies in
:mod:`forwarder_api.deps`, so tests get a fresh set for each ``create_app(settings)``. Its
:class:`~forwarder_worker.core.Core` (the Celery app, Redis clients, store, run log and
dispatcher) is built once here, as the operator builds its own into kopf's memo.
"""

from __future__ import annotations

from dataclasses import dataclass

from forwarder_worker import Core

from forwarder_api.auth import TokenSet
from forwarder_api.catalog import TaskCatalog
from forwarder_api.celery_client import QueueDeclarations, submit_conf
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
    core: Core
    queues: QueueDeclarations
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
        core = Core.from_settings(settings, conf=submit_conf(settings))
        catalog = TaskCatalog(core.app, settings)
        queues = QueueDeclarations(core.app)
        schedules: ScheduleBackend
        if settings.schedules_mode == "kubernetes":
            schedules = KubeSchedules(settings, catalog.known, core.backfill)
        else:
            schedules = LocalSchedules(
                settings.schedules_dir,
                core.store,
                core.runs,
                core.dispatcher,
                catalog.known,
                core.backfill,
            )
        # One asyncio client (and pool) for the event loop's reads, waits and submissions.
        watch = RunWatch(core.async_runs)
        return cls(
            settings=settings,
            core=core,
            queues=queues,
            watch=watch,
            submitter=Submitter(core.app, core.runs, core.async_runs, catalog, queues),
            catalog=catalog,
            schedules=schedules,
            flower=FlowerClient(settings),
            metrics=ApiMetrics(core, lambda: watch.waiting),
            tokens=TokenSet(settings),
        )

    async def aclose(self) -> None:
        """Close connections (the lifespan's shutdown)."""
        await self.flower.aclose()
        await self.watch.aclose()
        await self.core.aclose()
