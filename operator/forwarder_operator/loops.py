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

Redis or API errors never end the loop: it logs, backs off (1 s doubling to 60 s), and
carries on, so the operator recovers by itself when Redis comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis
from forwarder_worker.names import FINALIZER, MAX_BACKOFF
from forwarder_worker.schedules.reconcile import apply_schedule
from forwarder_worker.schedules.status import applied_status, runs_status
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from forwarder_operator import reconciler
from forwarder_operator.retries import Retry
from forwarder_operator.services import Services

log = logging.getLogger(__name__)

# Errors that mean "try again later", not "this code is wrong".
TRANSIENT = (redis.RedisError, ApiException, HTTPError, OSError)


class StatusWriter:
    """Copies changed run records into status; remembers what it wrote to skip no-ops."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.pending: set[str] = set()
        self.written: dict[str, dict[str, Any]] = {}

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
            if self.written.get(name) != status:
                if not services.kube.patch_status(namespace, resource, status):
                    self.written.pop(name, None)
                    self.pending.discard(name)
                    continue
                self.written[name] = status
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
        f"{r['metadata']['namespace']}/{r['metadata']['name']}": r
        for r in services.kube.list_scheduled_tasks()
        if config.watches(r["metadata"]["namespace"])
    }
    removed = sorted(entries.keys() - live.keys())
    for name in removed:
        services.forget(name)
        log.info("removed orphan schedule entry %s (its ScheduledTask is gone)", name)
    repaired = []
    for name, resource in sorted(live.items()):
        metadata = resource["metadata"]
        uid, generation = metadata.get("uid", ""), int(metadata.get("generation") or 0)
        entry = entries.get(name)
        if entry is not None and entry.uid == uid and entry.generation >= generation:
            continue  # in step (or its newest spec is invalid and the last valid one stays)
        if FINALIZER not in (metadata.get("finalizers") or ()):
            continue  # not reconciled yet: its watch event will make the entry
        if metadata.get("deletionTimestamp"):
            continue
        if services.retries.pending(metadata["namespace"], metadata["name"]):
            continue  # waits for Redis in the retry queue
        if entry is None and services.store.get(name) is not None:
            continue  # its handler created the entry since the entries were read
        result = apply_schedule(
            services.store,
            metadata["namespace"],
            metadata["name"],
            resource.get("spec") or {},
            uid=uid,
            generation=generation,
            known_tasks=services.known_tasks,
        )
        if result.entry is None or result.reason == "Stale":
            continue  # an invalid spec (its handler reported it), or a handler got there first
        repaired.append(name)
        log.info("repaired schedule entry %s (%s)", name, "lost" if entry is None else "stale")
        services.kube.patch_status(
            metadata["namespace"],
            metadata["name"],
            applied_status(result, generation, resource.get("status") or {}, time.time()),
        )
    return removed, repaired


def retry_one(services: Services, retry: Retry) -> None:
    """Reconcile one queued object afresh (blocking I/O: run it in a thread); raises on
    Redis or Kubernetes errors, and the caller queues it again."""
    namespace, name = retry.namespace, retry.name
    body = services.kube.get_scheduled_task(namespace, name)
    if body is None:
        metadata = {"namespace": namespace, "name": name, "uid": retry.uid}
        if reconciler.forget_if_owned(services, metadata):
            log.info("[%s/%s] schedule entry removed (the object is gone)", namespace, name)
        services.retries.done(namespace, name)
        return
    plan = reconciler.plan(services, body, initial=True)
    # Done before the writes below: watch events from now on are handled again, so a spec
    # change that lands meanwhile is not lost (reconciling is idempotent).
    services.retries.done(namespace, name)
    kube = services.kube
    if plan.status and not kube.patch_status(namespace, name, plan.status):
        return  # deleted meanwhile: its DELETED event takes care of the entry
    if plan.add_finalizer or plan.remove_finalizer:
        kube.set_finalizer(body, present=plan.add_finalizer)
    for event in plan.events:
        kube.post_event(body, event.type, event.reason, event.message)
    for line in plan.log:
        log.info("[%s/%s] %s", namespace, name, line)


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
                "[%s/%s] retrying in %.0fs: %s",
                retry.namespace,
                retry.name,
                delay,
                exc,
                exc_info=not isinstance(exc, TRANSIENT),
            )
            continue
        recovered += 1
    return recovered


async def run_forever(services: Services) -> None:
    """Status passes every ``operator_status_interval``, sweeps every ``operator_sweep_interval``
    (the first one at once), until cancelled."""
    config = services.config
    writer = StatusWriter(services)
    next_sweep = 0.0
    failures = 0
    while True:
        try:
            if time.monotonic() >= next_sweep:
                await asyncio.to_thread(sweep, services)
                next_sweep = time.monotonic() + config.operator_sweep_interval
            await retry_due(services)
            await asyncio.to_thread(writer.pass_once)
        except Exception as exc:
            # The loop must outlive any one failure; a bug is logged with its traceback.
            failures += 1
            delay = min(2 ** (failures - 1), MAX_BACKOFF)
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
