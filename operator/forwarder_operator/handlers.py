"""kopf handlers for ScheduledTask: every watch event goes to one level-triggered reconcile.

* each event: the object is validated into a
  :class:`~forwarder_operator.resource.ScheduledTask`, then
  :func:`forwarder_operator.reconciler.plan` decides from it as it is (entry applied for
  this generation? finalizer on? being deleted? a new run-now value?), and a
  :class:`~forwarder_operator.writer.KopfWriter` puts the plan into kopf's patch (status,
  finalizer) and Events. The events our own writes cause are in step and cost nothing. An
  invalid spec gets ``Ready=False`` and one Warning Event per generation, and is not retried.
* delete: the finalizer ``forwarder.dev/finalizer`` keeps the resource until its entry and
  run history are gone.
* Redis down: ``Ready=False`` (RedisUnavailable) once, and the object waits in the retry
  queue, which the background loop drains with backoff.
* startup: tuned kopf settings, the shared services, and the one background task that runs
  the status loop, the retries and the sweep (:mod:`forwarder_operator.loops`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
from collections.abc import Iterable
from typing import Any

import kopf
import redis
from forwarder_worker.names import FINALIZER, GROUP, PLURAL, VERSION

from forwarder_operator import kube, loops, reconciler
from forwarder_operator.resource import ScheduledTask
from forwarder_operator.services import Services, services_of
from forwarder_operator.settings import OperatorSettings
from forwarder_operator.writer import KopfWriter

HANDLER = "scheduledtask"
"""The event handler's id, as kopf's log lines name it."""
RECONCILED = "forwarder.reconciled"
"""Key in kopf's per-object memo: this process has reconciled the object once."""
FINALIZER_ASKED = "forwarder.finalizer_asked"
"""Key in kopf's per-object memo: when (event loop time) this process last asked for our
finalizer on the object, until an event shows it on."""
FINALIZER_PATIENCE = 30.0
"""Seconds after asking for the finalizer during which an event without it is taken for an
echo of our own writes, not a reason to ask again.

kopf sends a handler's status merge-patch first and its finalizer JSON-patch (tested against
the version the status patch made) second, so the watch event of the status write shows the
object without the finalizer. Asking again on it sent a third PATCH per new object, which
failed 422 on the version test every time: a third of the operator's requests at a start
(bench/REPORT.md, operator scale). A JSON-patch that kopf could not apply stays in kopf's
per-object patch and is sent again with the next event, so nothing waits on our re-asking;
after this long (an API error lost the patch, say) the next event asks again. A finalizer
taken off later (``kubectl replace``) is put back at once: the ask is forgotten as soon as an
event shows the finalizer on."""
GC_THRESHOLDS = (50_000, 20, 10)
"""The cyclic garbage collector's thresholds in the operator (CPython's default: 700, 10, 10).

With thousands of objects in flight, kopf's per-object state, bodies and tasks make a large
heap, and every full collection walks all of it: at 10,000 resources the collector took
7.7-9.1 s of the operator's 66-68 s of CPU to Ready, in 22 full collections. Collecting the
young generation every 50,000 net allocations instead of 700 took 1.5-2.8 s (2 full
collections), with no more memory (bench/REPORT.md, operator scale). Reference cycles are
still collected, just in larger batches."""
GC_BEFORE = "gc_thresholds_before"
"""Key in kopf's memo: the thresholds to put back when the operator stops."""
WORKER_LIMIT = 40
"""At most this many of kopf's per-object workers at once (kopf's default: no limit).

Unbounded, a start with N resources runs N workers together, each sending its status PATCH
at once. The API server's priority and fairness admits a few hundred requests of one
ServiceAccount (workload-low: about 370 seats and 6 queues of 50) and answers the rest 429,
with a Retry-After it doubles while the drops go on, up to 32 s; kopf honours it, so the
objects became Ready in waves about 30 s apart. At N = 10,000 on the test control plane:
all Ready after 174 s, 24,600 429s, operator RSS 1.1 GiB (an in-flight request, a TLS
connection and a task per object). With 200 workers: 129 s, no 429, 342 MiB. Workers past
the limit wait in kopf's scheduler with their events queued; the watch stream is not held.
Each busy worker costs memory (about 0.3 MiB: its request, connection and body), and with
:data:`WORKER_IDLE` short a slot is busy only while its object is handled, so 100 were as fast
as 200: 59 s and 222 MiB at N = 10,000, where 200 with 0.5 s idle took 72 s and 262 MiB. The
API server's CPU bounds the rate, not the operator's concurrency, and 40 are as fast as 100
(back to back at N = 10,000: 84.2 / 91.8 s vs 82.3 / 91.4 s) with fewer TLS connections held
(kopf's HTTP client keeps one per request in flight, with a 128 KiB read buffer, 15 s after):
operator RSS 187-196 MiB, where 100 reached 205-207 (both with :mod:`forwarder_operator.heap`;
development runs of bench/operator_scale.py)."""
WORKER_IDLE = 0.05
"""Seconds an idle per-object worker waits for more events before it frees its slot (kopf's
default: 5 s, which with a limit would hold each slot 5 s after its object is done). kopf
keeps a worker until the watch event of its own last PATCH arrives anyway; after that, the
idle wait only held the slot (0.5 s was half of each slot's time at a start). An event after
the worker ends starts a new one."""
EXECUTOR = "executor"
"""Key in kopf's memo: kopf's thread pool for sync work (``settings.execution.executor``)."""


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base, for an operator without change-detecting handlers: none.

    kopf builds each event's "essence" (a deep copy of the body less its system fields) and
    reads the last handled one back from an annotation, on every watch event, to diff them for
    its create/update/resume handlers and daemons. This operator has only the event handler,
    which decides from the object itself (:mod:`forwarder_operator.reconciler`), so nothing
    reads that diff: building it was 4-5% of the operator's CPU at startup. kopf's documented
    extension point (``settings.persistence.diffbase_storage``) takes this empty one instead;
    ``tests/operator/test_operator_reconcile.py`` fails if a handler that needs a diff appears.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class QuietSuccess(logging.Filter):
    """Drops kopf's "Handler 'scheduledtask' succeeded." line: kopf logs it for every watch
    event, including those our own status writes cause (one per run), and it says nothing
    the reconcile's own log lines do not. Failures still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            isinstance(record.msg, str) and record.msg.startswith(f"Handler {HANDLER!r} succeeded")
        )


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The ServiceAccount in a cluster, else ``KUBECONFIG`` (else ``~/.kube/config``): the
    order of :class:`~forwarder_operator.kube.KubeClient`'s config, looked up at login.

    kopf registers these same two as fallbacks only when no client library is installed
    and only if it finds the file when kopf is imported: an operator started in-process
    after setting ``KUBECONFIG`` would have no login at all. With a handler of ours, kopf
    uses none of its own. A kubeconfig user's exec plugin is run here (kopf's login reads
    only what the file holds).
    """
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is None or info.token or info.certificate_path or info.certificate_data:
        return info
    # A kubeconfig user with an exec plugin: kopf's login found no credential in the file.
    try:
        plugin = kube.exec_credential()
    except kube.ExecPluginError as exc:
        raise kopf.LoginError(str(exc)) from None
    return info if plugin is None else dataclasses.replace(info, **plugin)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Tune kopf, build the services, and start the background loop."""
    config = memo.get("config")
    if not isinstance(config, OperatorSettings):
        config = OperatorSettings()
        memo["config"] = config
    # settings.persistence.finalizer stays kopf's default, which no ScheduledTask carries:
    # kopf removes its own finalizer from objects when no kopf handler needs one, and ours
    # (forwarder.dev/finalizer, names.FINALIZER) is the reconcile's to add and remove.
    objects_log = logging.getLogger("kopf.objects")
    if not any(isinstance(f, QuietSuccess) for f in objects_log.filters):
        objects_log.addFilter(QuietSuccess())
    settings.persistence.diffbase_storage = NoDiffBase()
    # Events only for what a user must act on; handler chatter stays in the log.
    settings.posting.level = logging.WARNING
    # Ask the server to end each watch after 5 minutes, and give up on a silent connection a
    # little later: load balancers drop idle streams without telling either side.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.watching.chunk_size = kube.LIST_CHUNK
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.execution.max_workers = config.operator_workers
    settings.queueing.worker_limit = WORKER_LIMIT
    settings.queueing.idle_timeout = WORKER_IDLE
    memo[EXECUTOR] = settings.execution.executor
    memo.setdefault(GC_BEFORE, gc.get_threshold())
    gc.set_threshold(*GC_THRESHOLDS)
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
    before = memo.get(GC_BEFORE)
    if before is not None:
        gc.set_threshold(*before)  # for a host process that goes on without the operator


@kopf.on.probe(id="redis")
def redis_probe(memo: kopf.Memo, **_: Any) -> bool:
    """Reported on the liveness endpoint; a Redis outage is shown, never fatal to liveness."""
    try:
        return bool(services_of(memo).client.ping())
    except redis.RedisError:
        return False


@kopf.on.event(GROUP, VERSION, PLURAL, id=HANDLER)
async def scheduledtask(
    type: str | None,
    event: kopf.RawEvent,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Reconcile the object this event shows; kopf applies ``patch`` afterwards.

    Async so that the events needing no Redis (most are our own writes coming back) are
    decided on the event loop; Redis work, which is synchronous, goes to kopf's thread pool.
    The object is validated once, from the event's raw object (validating kopf's ``body``
    view costs more: :mod:`forwarder_operator.resource`); ``body`` is what kopf's Events name.
    """
    services = services_of(memo)
    executor = memo.get(EXECUTOR)
    # Fails only on an object the API server would not serve (kopf logs the error).
    task = ScheduledTask.model_validate(event["object"])
    metadata = task.metadata
    writer = KopfWriter(body, patch, logger)
    loop = asyncio.get_running_loop()
    if type == "DELETED":
        try:
            plan = await loop.run_in_executor(executor, reconciler.gone, services, metadata)
        except redis.RedisError as exc:
            delay = services.retries.add(metadata)
            logger.warning("Redis is unreachable, retrying in %.0fs: %s", delay, exc)
            return
        services.retries.done(metadata.namespace, metadata.name)
        writer.write(plan)
        return
    if services.retries.pending(metadata.namespace, metadata.name):
        return  # the retry reads the object afresh once Redis answers
    # The first sight since this process started re-applies (as kopf's resume handlers did):
    # Redis may have lost the entry, or the run history changed, meanwhile. kopf lists again
    # (type None) after a watch gap too; those listings must not re-apply everything, so the
    # per-object memo remembers that this object was reconciled.
    initial = type is None and not memo.get(RECONCILED)
    try:
        if reconciler.needs_redis(task, initial=initial):
            plan = await loop.run_in_executor(
                executor, functools.partial(reconciler.plan, services, task, initial=initial)
            )
        else:
            plan = reconciler.plan(services, task, initial=initial)
    except redis.RedisError as exc:
        delay = services.retries.add(metadata)
        writer.write(reconciler.unavailable(task, exc))
        logger.warning("Redis is unreachable, retrying in %.0fs: %s", delay, exc)
        return
    except Exception:
        # kopf does not retry event handlers: anything else (a broker error in run-now, a
        # bug) is logged with its traceback and retried with the same backoff.
        delay = services.retries.add(metadata)
        logger.exception("reconcile failed, retrying in %.0fs", delay)
        return
    memo[RECONCILED] = True
    if FINALIZER in metadata.finalizers:
        memo.pop(FINALIZER_ASKED, None)
    elif plan.add_finalizer:
        asked = memo.get(FINALIZER_ASKED)
        if asked is not None and loop.time() - asked < FINALIZER_PATIENCE:
            plan.add_finalizer = False
        else:
            memo[FINALIZER_ASKED] = loop.time()
    writer.write(plan)
