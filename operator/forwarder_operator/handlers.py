"""kopf handlers for ScheduledTask: thin, each validates, calls the core, and writes status.

* create / resume / spec update: :func:`forwarder_worker.reconcile.apply_schedule`, then
  the Ready condition, ``observedGeneration`` and ``nextRunTime``. An invalid spec gets
  ``Ready=False`` and one Warning Event and is not retried: kopf calls the handler again only
  when the spec changes.
* delete: the finalizer ``forwarder.dev/finalizer`` keeps the resource until its entry and
  run history are gone.
* the ``forwarder.dev/run-now`` annotation: one run per distinct value.
* startup: tuned kopf settings, the shared services, and the one background task that runs
  the status loop and the sweep (:mod:`forwarder_operator.loops`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf
import redis
from forwarder_worker.reconcile import apply_schedule
from forwarder_worker.status import applied_status, runs_status, unavailable_status

from forwarder_operator import loops
from forwarder_operator.kube import GROUP, PLURAL, VERSION
from forwarder_operator.services import FINALIZER, HANDLED, KOPF_PREFIX, Services, services_of
from forwarder_operator.settings import OperatorSettings

RUN_NOW = "forwarder.dev/run-now"
# Longest wait between retries while Redis is down.
MAX_BACKOFF = 60.0


def backoff(retry: int) -> float:
    """Seconds before retry number ``retry``: 1, 2, 4, ... up to MAX_BACKOFF."""
    return float(min(2**retry, MAX_BACKOFF))


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Tune kopf, build the services, and start the background loop."""
    config = memo.get("config")
    if not isinstance(config, OperatorSettings):
        config = OperatorSettings()
        memo["config"] = config
    settings.persistence.finalizer = FINALIZER
    # kopf's bookkeeping goes into annotations, not into status: status belongs to users'
    # tools (printer columns, kubectl wait) and has a strict schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key=HANDLED.partition("/")[2]
    )
    # Events only for what a user must act on; handler chatter stays in the log.
    settings.posting.level = logging.WARNING
    # Ask the server to end each watch after 5 minutes, and give up on a silent connection a
    # little later: load balancers drop idle streams without telling either side.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.execution.max_workers = config.operator_workers
    # Handlers that fail unexpectedly are retried, but not in a tight loop.
    settings.execution.default_backoff = 10
    if config.operator_peering:
        settings.peering.name = config.operator_peering
        settings.peering.priority = config.operator_priority
        settings.peering.mandatory = True
    services = Services.create(config)
    memo["services"] = services
    memo["loop_task"] = asyncio.create_task(loops.run_forever(services), name="forwarder-loops")


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    """Stop the background loop and close connections."""
    task = memo.get("loop_task")
    if isinstance(task, asyncio.Task):
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    services = memo.get("services")
    if isinstance(services, Services):
        services.close()


@kopf.on.probe(id="redis")
def redis_probe(memo: kopf.Memo, **_: Any) -> bool:
    """Reported on the liveness endpoint; a Redis outage is shown, never fatal to liveness."""
    try:
        return bool(services_of(memo).client.ping())
    except redis.RedisError:
        return False


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile(
    namespace: str | None,
    name: str,
    uid: str,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    retry: int,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Upsert the schedule entry and report it; invalid specs are reported, not retried."""
    assert namespace is not None  # ScheduledTask is namespaced
    services = services_of(memo)
    generation = meta.get("generation")
    try:
        result = apply_schedule(
            services.store,
            namespace,
            name,
            dict(spec),
            uid=uid,
            generation=int(generation or 0),
            known_tasks=services.known_tasks,
        )
    except redis.RedisError as exc:
        patch.status.update(unavailable_status(exc, generation, status, time.time()))
        raise kopf.TemporaryError(f"Redis is unreachable: {exc}", delay=backoff(retry)) from exc
    patch.status.update(applied_status(result, generation, status, time.time()))
    if result.entry is not None and result.reason != "Stale":
        # The run history too: runHistoryLimit may have changed, and after a restart the
        # status loop reports only what changes from now on.
        entry_name = result.entry.name
        history = services.runs.summary(entry_name, result.entry.history)
        patch.status.update(runs_status(history, services.store.get(entry_name)))
    if result.ready:
        logger.info("%s", result.message)
    else:
        kopf.warn(body, reason=result.reason, message=result.message)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def remove(
    namespace: str | None, name: str, memo: Any, retry: int, logger: kopf.Logger, **_: Any
) -> None:
    """Remove the entry and its run history; the finalizer holds the resource until then."""
    assert namespace is not None  # ScheduledTask is namespaced
    try:
        services_of(memo).forget(f"{namespace}/{name}")
    except redis.RedisError as exc:
        raise kopf.TemporaryError(f"Redis is unreachable: {exc}", delay=backoff(retry)) from exc
    logger.info("%s/%s: schedule entry removed", namespace, name)


@kopf.on.field(GROUP, VERSION, PLURAL, field=("metadata", "annotations", RUN_NOW))
def run_now(
    namespace: str | None,
    name: str,
    new: Any,
    body: kopf.Body,
    memo: Any,
    retry: int,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Run the task once for each new value of the run-now annotation."""
    assert namespace is not None  # ScheduledTask is namespaced
    if not new or body.get("metadata", {}).get("deletionTimestamp"):
        return
    try:
        outcome = services_of(memo).run_now(f"{namespace}/{name}", str(new))
    except LookupError as exc:
        kopf.warn(body, reason="RunNowFailed", message=str(exc))
        return
    except redis.RedisError as exc:
        raise kopf.TemporaryError(f"Redis is unreachable: {exc}", delay=backoff(retry)) from exc
    if outcome is None:
        logger.info("run-now %r already ran", new)
    elif outcome.sent:
        # A Normal event (kopf.info would be filtered by the WARNING posting level).
        kopf.event(
            body, type="Normal", reason="RunNow", message=f"run {outcome.run_id} sent for {new!r}"
        )
    else:
        kopf.warn(body, reason="RunNowSkipped", message=outcome.reason or "skipped")
