"""The operator's dependencies, shared through kopf's ``memo``: the process's
:class:`~forwarder_worker.core.Core` (store, run log, dispatcher, Redis client and Celery app,
built once from settings) and the operator's own Kubernetes client and retry queue.

Handlers and the background loops all take them from here, so they never build their own
connections.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import kopf
import redis
from celery import Celery
from forwarder_worker import Core
from forwarder_worker.dispatch.backfill import Backfilled, parse_window
from forwarder_worker.dispatch.dispatcher import Dispatcher, Firing, Outcome, Overrides
from forwarder_worker.runs.records import RunLog
from forwarder_worker.schedules.store import ScheduleStore

from forwarder_operator.kube import KubeClient
from forwarder_operator.retries import RetryQueue
from forwarder_operator.settings import OperatorSettings


@dataclass
class Services:
    """Everything a handler or loop talks to."""

    config: OperatorSettings
    core: Core
    kube: KubeClient
    known_tasks: Collection[str] | None
    retries: RetryQueue

    @classmethod
    def create(cls, config: OperatorSettings) -> Services:
        """Build the services; nothing connects yet, so a down Redis does not stop startup."""
        core = Core.from_settings(config)
        return cls(
            config=config,
            core=core,
            kube=KubeClient(config.operator_namespaces),
            known_tasks=core.registered_task_names() if config.operator_check_tasks else None,
            retries=RetryQueue(),
        )

    @property
    def client(self) -> redis.Redis:
        return self.core.client

    @property
    def store(self) -> ScheduleStore:
        return self.core.store

    @property
    def runs(self) -> RunLog:
        return self.core.runs

    @property
    def app(self) -> Celery:
        return self.core.app

    @property
    def dispatcher(self) -> Dispatcher:
        return self.core.dispatcher

    def close(self) -> None:
        """Release connections at operator shutdown."""
        self.core.close()
        self.kube.close()

    def run_now(
        self, entry_name: str, value: str, overrides: Overrides | None = None
    ) -> Outcome | None:
        """Fire ``entry_name`` once for run-now ``value`` (with ``overrides``, if given);
        None if that value was seen before.

        The last value is kept in Redis, so a restarted operator does not run it again, and
        a value that failed (no entry: raises LookupError) is not tried again either: each
        new value is one attempt, as ``kubectl annotate`` users expect.
        """
        if self.store.last_run_now(entry_name) == value:
            return None
        stored = self.store.get(entry_name)
        if stored is None:
            self.store.note_run_now(entry_name, value)
            raise LookupError(f"schedule {entry_name} has no entry (is its spec valid?)")
        firing = Firing(stored.entry, time.time(), "trigger", overrides)
        (outcome,) = self.dispatcher.fire([firing])
        # Marked once sent: a publish that fails is tried again, never silently dropped.
        self.store.note_run_now(entry_name, value)
        return outcome

    def refuse_run_now(self, entry_name: str, value: str) -> bool:
        """Mark run-now ``value`` handled without running it (its overrides are malformed);
        False if it was handled before, so the refusal is reported once."""
        if self.store.last_run_now(entry_name) == value:
            return False
        self.store.note_run_now(entry_name, value)
        return True

    def backfill(self, entry_name: str, value: str) -> Backfilled | None:
        """Backfill the window of annotation ``value`` (``"<start>/<end>"``) once; None if
        that value was handled before. A refused window (BackfillRefused) or a missing entry
        (LookupError) is marked handled too: each new value is one attempt, as with run-now.
        Marked once done, so a Redis failure midway is tried again (the slots it ran are
        not run twice)."""
        if self.store.last_backfill(entry_name) == value:
            return None
        try:
            done = self.core.backfill.run(entry_name, parse_window(value))
        except (ValueError, LookupError):
            self.store.note_backfill(entry_name, value)
            raise
        self.store.note_backfill(entry_name, value)
        return done

    def forget(self, entry_name: str) -> None:
        """Remove a deleted schedule's entry with every key kept for it (run history too)."""
        self.store.delete(entry_name)


def services_of(memo: Any) -> Services:
    """The Services that startup put into kopf's memo."""
    services = memo.get("services") if isinstance(memo, kopf.Memo) else None
    if not isinstance(services, Services):
        raise RuntimeError("forwarder_operator services are not set up (startup did not run)")
    return services
