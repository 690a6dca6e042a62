"""The operator's dependencies, built once from settings and shared through kopf's ``memo``.

Handlers and the background loops get the same store, run log, dispatcher and Kubernetes
client from here, so they never build their own connections.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import kopf
import redis
from celery import Celery
from forwarder_worker._redis.clients import redis_client
from forwarder_worker.app import create_app, registered_task_names
from forwarder_worker.dispatch.dispatcher import Dispatcher, Firing, Outcome
from forwarder_worker.runs.records import RunLog
from forwarder_worker.schedules.store import ScheduleStore

from forwarder_operator.kube import KubeClient
from forwarder_operator.retries import RetryQueue
from forwarder_operator.settings import OperatorSettings


@dataclass
class Services:
    """Everything a handler or loop talks to."""

    config: OperatorSettings
    client: redis.Redis
    store: ScheduleStore
    runs: RunLog
    app: Celery
    dispatcher: Dispatcher
    kube: KubeClient
    known_tasks: Collection[str] | None
    retries: RetryQueue

    @classmethod
    def create(cls, config: OperatorSettings) -> Services:
        """Build the services; nothing connects yet, so a down Redis does not stop startup."""
        client = redis_client(config)
        runs = RunLog(
            client,
            config.key_prefix,
            ttl=config.result_expires,
            global_limit=config.global_history_limit,
            schedule_limit=config.run_history_limit,
            result_limit=config.result_max_chars,
        )
        app = create_app(config)
        return cls(
            config=config,
            client=client,
            store=ScheduleStore(client, config.key_prefix),
            runs=runs,
            app=app,
            dispatcher=Dispatcher(app, client, runs, config.key_prefix),
            kube=KubeClient(config.operator_namespaces),
            known_tasks=registered_task_names(app) if config.operator_check_tasks else None,
            retries=RetryQueue(),
        )

    def close(self) -> None:
        """Release connections at operator shutdown."""
        self.client.close()
        self.kube.close()

    def run_now(self, entry_name: str, value: str) -> Outcome | None:
        """Fire ``entry_name`` once for run-now ``value``; None if that value was seen before.

        The last value is kept in Redis, so a restarted operator does not run it again, and
        a value that failed (no entry: raises LookupError) is not tried again either: each
        new value is one attempt, as ``kubectl annotate`` users expect.
        """
        previous = self.client.hget(self.run_now_key, entry_name)
        if previous == value:
            return None
        stored = self.store.get(entry_name)
        if stored is None:
            self.client.hset(self.run_now_key, entry_name, value)
            raise LookupError(f"schedule {entry_name} has no entry (is its spec valid?)")
        (outcome,) = self.dispatcher.fire([Firing(stored.entry, time.time(), "trigger")])
        # Marked once sent: a publish that fails is tried again, never silently dropped.
        self.client.hset(self.run_now_key, entry_name, value)
        return outcome

    @property
    def run_now_key(self) -> str:
        """Hash of the last run-now value handled per schedule."""
        return f"{self.config.key_prefix}:run-now"

    def forget(self, entry_name: str) -> None:
        """Remove a deleted schedule's entry, run history and run-now marker."""
        self.store.delete(entry_name)
        self.runs.forget_schedule(entry_name)
        self.client.hdel(self.run_now_key, entry_name)


def services_of(memo: Any) -> Services:
    """The Services that startup put into kopf's memo."""
    services = memo.get("services") if isinstance(memo, kopf.Memo) else None
    if not isinstance(services, Services):
        raise RuntimeError("forwarder_operator services are not set up (startup did not run)")
    return services
