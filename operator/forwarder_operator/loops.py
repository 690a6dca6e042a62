"""The operator's one background task: the status loop, the retries, and the orphan/drift
sweep.

A timer per resource would cost one coroutine and one Redis poll per ScheduledTask. Instead
one loop asks the run log which schedules changed since its last pass
(:meth:`RunLog.take_changed`) and patches only those resources' status, and only when what
it would write differs from what it wrote last. The same loop sweeps at startup and every
``operator_sweep_interval``: an entry whose resource is gone is removed, and a resource whose
entry is gone (Redis flushed or restarted without persistence) or stale (an old snapshot)
gets it back.

With peering, every replica runs this loop, paused or not (kopf does not tell activities
about pauses). That is safe: sweeps converge to the same entries and the store refuses older
generations, and each status pass patches what it took from the changed set.

Objects whose reconcile failed on Redis wait in the retry queue
(:mod:`forwarder_operator.retries`); each pass tries the due ones again, reading each object
afresh (one Redis ping first, so an outage costs no Kubernetes requests).

The status pass, the sweep and the retries write to resources through
:class:`~forwarder_operator.writer.ApiWriter`: a retried object gets the same status,
finalizer, Events and log lines as its handler would have written.

Every ``HEAP_RELEASE_INTERVAL`` the loop also gives the heap memory freed since back to the
OS (:mod:`forwarder_operator.heap`), so the operator's RSS falls back after a burst.

Redis or API errors never end the loop: it logs, backs off (1 s doubling to 60 s), and
carries on, so the operator recovers by itself when Redis comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx2
import redis
from forwarder_worker.names import SUSPENDED_AFTER_FAILURES
from forwarder_worker.schedules.reconcile import apply_schedule, paused_message
from forwarder_worker.schedules.status import (
    applied_status,
    completed_status,
    ready_condition,
    runs_status,
)

from forwarder_operator import heap, reconciler
from forwarder_operator.resource import ObjectMeta
from forwarder_operator.retries import Retry, backoff
from forwarder_operator.services import Services
from forwarder_operator.writer import ApiWriter, Event, Plan

log = logging.getLogger(__name__)

# Errors that mean "try again later", not "this code is wrong".
TRANSIENT = (redis.RedisError, httpx2.HTTPError, OSError)
HEAP_RELEASE_INTERVAL = 10.0
"""Seconds between the loop's calls that give freed heap memory back to the OS
(:mod:`forwarder_operator.heap`): a few milliseconds after a burst, microseconds otherwise."""


class StatusPass:
    """Copies changed run records into status; remembers what it wrote to skip no-ops."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.pending: set[str] = set()
        self.written: dict[str, dict[str, Any]] = {}
        # Schedules this process has reported suspended after failures, by the pause's
        # identity (the entry's rev, which every resume bumps, and the count): the condition
        # and its Warning Event are written when a pause begins, once.
        self.paused: dict[str, tuple[str, int]] = {}

    def pass_once(self) -> int:
        """One pass (blocking I/O: run it in a thread). Returns how many resources it patched.

        Schedules whose patch fails stay pending for the next pass.
        """
        services = self.services
        self.pending |= services.runs.take_changed()
        patched = 0
        for name in sorted(self.pending):
            namespace, _, resource = name.partition("/")
            if not resource or not services.config.watches(namespace):
                self.pending.discard(name)
                continue
            stored = services.store.get(name)
            if stored is None:  # deleted, or not ours: nothing to report on
                self.pending.discard(name)
                self.written.pop(name, None)
                continue
            status = runs_status(services.runs.summary(name, stored.entry.history), stored)
            # Beat completes an entry (a window over, maxRuns reached, a one-off fired)
            # without the spec changing: the condition says so from here.
            status.update(completed_status(stored))
            plan = Plan(status=dict(status))
            if stored.paused is None:
                self.paused.pop(name, None)
            elif self.paused.get(name) != (stored.rev, stored.paused):
                # A run's transition paused it (suspendAfterFailures): the Ready condition
                # says so, with a Warning Event, as the handler would say it.
                message = paused_message(stored.paused)
                plan.status["conditions"] = [
                    ready_condition(
                        False, SUSPENDED_AFTER_FAILURES, message, None, None, time.time()
                    )
                ]
                plan.events.append(Event("Warning", SUSPENDED_AFTER_FAILURES, message))
            if self.written.get(name) != status or plan.events:
                target = ObjectMeta(namespace=namespace, name=resource)
                if not ApiWriter(services.kube, target).write(plan):
                    self.written.pop(name, None)
                    self.pending.discard(name)
                    continue
                self.written[name] = status
                if stored.paused is not None:
                    self.paused[name] = (stored.rev, stored.paused)
                patched += 1
            self.pending.discard(name)
        return patched


def sweep(services: Services) -> tuple[list[str], list[str]]:
    """Remove orphan entries and repair lost or stale ones (blocking I/O: run it in a thread).

    Entries are read before resources are listed: an entry is only ever written after its
    resource exists, so an entry missing from the listing really has no resource. An entry is
    repaired when it is missing (Redis flushed or restarted without persistence), belongs to
    an older resource of the same name, or holds an older generation (Redis restored from an
    old snapshot). The store refuses writes of older generations, so a sweep that races a
    handler never undoes the handler's newer write.

    Returns the names removed and the names repaired.
    """
    config = services.config
    entries = {
        stored.entry.name: stored.entry
        for stored in services.store.entries()
        if config.watches(stored.entry.namespace)
    }
    live = {
        task.metadata.entry_name: task
        for task in services.kube.list_scheduled_tasks()
        if config.watches(task.metadata.namespace)
    }
    removed = sorted(entries.keys() - live.keys())
    for name in removed:
        services.forget(name)
        log.info("removed orphan schedule entry %s (its ScheduledTask is gone)", name)
    repaired = []
    for name, task in sorted(live.items()):
        metadata = task.metadata
        uid, generation = metadata.uid, metadata.generation or 0
        entry = entries.get(name)
        if entry is not None and entry.uid == uid and entry.generation >= generation:
            continue  # in step (or its newest spec is invalid and the last valid one stays)
        if task.status is None or task.status.observed_generation is None:
            # Not reconciled yet: its watch event will make the entry. (Not "no finalizer":
            # with the chart's admission policy a new object has it from its creation, and
            # a sweep at a start with thousands queued wrote a second status to each one it
            # got to before its handler did.)
            continue
        if metadata.deletion_timestamp:
            continue
        if services.retries.pending(metadata.namespace, metadata.name):
            continue  # waits for Redis in the retry queue
        if entry is None and services.store.get(name) is not None:
            continue  # its handler created the entry since the entries were read
        result = apply_schedule(
            services.store,
            metadata.namespace,
            metadata.name,
            task.spec,
            uid=uid,
            generation=generation,
            known_tasks=services.known_tasks,
        )
        if result.entry is None or result.reason == "Stale":
            continue  # an invalid spec (its handler reported it), or a handler got there first
        repaired.append(name)
        status = applied_status(result, generation, task.previous_status(), time.time())
        why = "lost" if entry is None else "stale"
        ApiWriter(services.kube, metadata).write(
            Plan(status=status, log=[f"repaired schedule entry ({why})"])
        )
    return removed, repaired


def retry_one(services: Services, retry: Retry) -> None:
    """Reconcile one queued object afresh (blocking I/O: run it in a thread); raises on
    Redis or Kubernetes errors, and the caller queues it again."""
    namespace, name = retry.metadata.namespace, retry.metadata.name
    task = services.kube.get_scheduled_task(namespace, name)
    if task is None:
        plan = reconciler.gone(services, retry.metadata)
        services.retries.done(namespace, name)
        ApiWriter(services.kube, retry.metadata).write(plan)
        return
    plan = reconciler.plan(services, task, initial=True)
    # Done before the writes below: watch events from now on are handled again, so a spec
    # change that lands meanwhile is not lost (reconciling is idempotent).
    services.retries.done(namespace, name)
    ApiWriter(services.kube, task.metadata).write(plan)


async def retry_due(services: Services) -> int:
    """Try the due objects of the retry queue again; returns how many are in step now."""
    due = services.retries.due()
    if not due:
        return 0
    try:
        await asyncio.to_thread(services.client.ping)
    except redis.RedisError as exc:
        delay = max(services.retries.postpone(retry) for retry in due)
        log.warning("%d objects wait for Redis (%s); next try in %.0fs", len(due), exc, delay)
        return 0
    recovered = 0
    for retry in due:
        try:
            await asyncio.to_thread(retry_one, services, retry)
        except Exception as exc:
            # One object's failure never stops the others; a bug shows its traceback.
            delay = services.retries.postpone(retry)
            log.warning(
                "[%s] retrying in %.0fs: %s",
                retry.metadata.entry_name,
                delay,
                exc,
                exc_info=not isinstance(exc, TRANSIENT),
            )
            continue
        recovered += 1
    return recovered


async def run_forever(services: Services) -> None:
    """Status passes every ``operator_status_interval``, sweeps every ``operator_sweep_interval``
    (the first one at once), freed memory released every ``HEAP_RELEASE_INTERVAL``, until
    cancelled."""
    config = services.config
    status_pass = StatusPass(services)
    next_sweep = next_release = 0.0
    failures = 0
    while True:
        try:
            if time.monotonic() >= next_sweep:
                await asyncio.to_thread(sweep, services)
                next_sweep = time.monotonic() + config.operator_sweep_interval
            await retry_due(services)
            await asyncio.to_thread(status_pass.pass_once)
            if time.monotonic() >= next_release:
                heap.release_free_memory()
                next_release = time.monotonic() + HEAP_RELEASE_INTERVAL
        except Exception as exc:
            # The loop must outlive any one failure; a bug is logged with its traceback.
            failures += 1
            delay = backoff(failures - 1)
            log.warning(
                "status loop: %s; retrying in %.0fs",
                exc,
                delay,
                exc_info=not isinstance(exc, TRANSIENT),
            )
            await asyncio.sleep(delay)
            continue
        if failures:
            log.info("status loop: recovered after %d failed passes", failures)
            failures = 0
        await asyncio.sleep(config.operator_status_interval)
