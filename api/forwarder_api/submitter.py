"""Submitting a run from the event loop: its run record, Celery message and task-sent event
written by one Redis script, in one round trip, with no threadpool hop.

The reference path (:func:`submit_blocking`) takes a threadpool hop and two round trips: the
run record (:meth:`~forwarder_worker.runs.records.RunLog.queued`), then ``send_task``'s message and
task-sent event through kombu. Here the message is built without ``send_task`` by the beat's
code (:mod:`forwarder_worker.dispatch.messages`, held to ``send_task``'s messages by its tests), and
routed by kombu's own Redis channel code into the Redis commands kombu would run (an
LPUSH on the queue's list for its priority, a PUBLISH of the grouped task-sent event on the
event exchange), which are *kept*, not run: kombu 5.7's publish batch hands each message's
final commands to a collector (``PublishBatch.add``), and
:class:`~forwarder_worker.dispatch.messages.CommandCapture` (shared with beat's claim) is such a
collector. Then one script (:data:`SUBMIT_SCRIPT`) writes the run record with the
run-record transition every writer uses and runs those commands after it, so the record
exists before any worker can see the message (a fast worker's RECEIVED always finds it),
atomically.

The script does nothing if the run's record already exists: run ids are fresh uuid4s, so an
existing record means this very submission already ran (a reply lost to a dropped connection
and the command sent again by the client's retry), and a retry never sends a message twice.

Anything this path does not handle goes to :func:`submit_blocking`, unchanged: a task the
catalog cannot vouch for without blocking (first use, or a task only the workers know),
a queue this process has not declared yet (the blocking path declares it), an ``eta`` or an
``expires`` date with a UTC offset other than 0 (send_task writes it as given), a
producer not opened yet (opened in the threadpool once), whatever
:class:`~forwarder_worker.dispatch.messages.TaskMessages` declines (another Celery, task
routes, publish signal receivers, task options it does not mirror...), and any Redis command
other than those two (a queue with an expiry, for one).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis.asyncio
from celery import Celery
from fastapi.concurrency import run_in_threadpool
from forwarder_worker.dispatch.dispatcher import publish_batch
from forwarder_worker.dispatch.messages import MessageBatch, TaskMessages, can_capture, capturing
from forwarder_worker.runs.records import TRANSITION_FUNCTION, RunLog
from kombu.exceptions import KombuError
from kombu.messaging import Producer

from forwarder_api.catalog import TaskCatalog
from forwarder_api.celery_client import QueueDeclarations
from forwarder_api.models import RunRequest

if TYPE_CHECKING:
    from forwarder_api.services import Services

# KEYS: run hash, global zset, changed set, then one key per message command.
# ARGV: the transition's 7 parameters, the number of field/value pairs, the pairs, then one
# (command, payload) pair per message command: 'lpush' (a queue's list) or 'publish' (a
# channel). Returns 0 if the run was recorded already (nothing done), else 1.
SUBMIT_SCRIPT = (
    TRANSITION_FUNCTION
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local nfields = tonumber(ARGV[8])
local fields = {}
for i = 9, 8 + 2 * nfields, 2 do fields[ARGV[i]] = ARGV[i + 1] end
transition(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
  tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), fields)
local first = 9 + 2 * nfields
for k = 4, #KEYS do
  local at = first + 2 * (k - 4)
  if ARGV[at] == 'lpush' then
    redis.call('LPUSH', KEYS[k], ARGV[at + 1])
  else
    redis.call('PUBLISH', KEYS[k], ARGV[at + 1])
  end
end
return 1
"""
)

#: The kombu Redis commands the script runs, by kombu's name for them.
SCRIPTED_COMMANDS = frozenset({"lpush", "publish"})
#: Routes (task, queue, priority) a reused message batch keeps before starting afresh.
MAX_ROUTES = 1000


def submit_blocking(services: Services, name: str, run: RunRequest) -> str:
    """Check, record and send one run of ``name`` with ``send_task``; its id. Blocks (Redis
    round trips, maybe asking the workers what they registered): run it in the threadpool."""
    services.catalog.require(name)
    runs, celery = services.runs, services.celery
    run_id = str(uuid.uuid4())
    # The queue is always named, as beat's dispatcher does (no task routes are configured),
    # so it can be declared once per process and the publish skip the per-message check.
    queue = run.queue or celery.conf.task_default_queue
    options: dict[str, Any] = {"queue": queue, "declare": []}
    if run.priority is not None:
        options["priority"] = run.priority
    if run.countdown is not None:
        options["countdown"] = run.countdown
    if run.eta is not None:
        options["eta"] = run.eta
    if run.expires is not None:
        options["expires"] = run.expires
    # Recorded before it is sent, so GET /runs/{id} knows the id from the first instant
    # and an id never submitted is a 404 rather than Celery's eternal PENDING. One round
    # trip for the record, one for the message and its task-sent event.
    runs.queued(
        run_id, name, source="api", args=run.args, kwargs=run.kwargs, expires=expires_at(run)
    )
    try:
        with celery.producer_or_acquire() as producer, publish_batch(producer):
            services.queues.ensure(producer, queue)
            celery.send_task(
                name,
                args=run.args,
                kwargs=run.kwargs,
                task_id=run_id,
                producer=producer,
                **options,
            )
    except KombuError as exc:
        runs.transition(
            run_id,
            "FAILURE",
            finished=time.time(),
            error_type="BrokerUnavailable",
            error=f"could not be sent: {exc}",
        )
        raise
    return run_id


def expires_at(run: RunRequest, now: float | None = None) -> float | None:
    """When the run's ``expires`` ends it, in epoch seconds (None: never)."""
    if run.expires is None:
        return None
    if isinstance(run.expires, datetime):
        return run.expires.timestamp()
    return (time.time() if now is None else now) + run.expires


class Submitter:
    """Submits runs: on the event loop in one round trip where it can, else as
    :func:`submit_blocking` does."""

    def __init__(
        self,
        celery: Celery,
        runs: RunLog,
        client: redis.asyncio.Redis,
        catalog: TaskCatalog,
        queues: QueueDeclarations,
    ) -> None:
        self.celery = celery
        self.runs = runs
        self.catalog = catalog
        self.queues = queues
        self.messages = TaskMessages(celery)
        self._script = client.register_script(SUBMIT_SCRIPT)
        # This submitter's own producer and message batch, used on the event loop only
        # (opened in the threadpool: opening a channel talks to Redis).
        self._producer: Producer | None = None
        self._batch: MessageBatch | None = None
        self._opening = asyncio.Lock()

    async def submit(self, services: Services, name: str, run: RunRequest) -> str:
        """Check, record and send one run of ``name``; its id."""
        if run.eta is None and self.catalog.required_at_once(name):
            if self._producer is None:
                async with self._opening:
                    if self._producer is None:
                        self._producer = await run_in_threadpool(self._open)
            prepared = self.prepare(name, run)
            if prepared is not None:
                keys, args = prepared
                await self._script(keys=keys, args=args)
                return str(args[1])
        return await run_in_threadpool(submit_blocking, services, name, run)

    def _open(self) -> Producer:
        connection = self.celery.connection_for_write()
        return Producer(connection.default_channel, auto_declare=False)  # type: ignore[no-untyped-call]

    def prepare(self, name: str, run: RunRequest) -> tuple[list[str], list[Any]] | None:
        """The submit script's KEYS and ARGV for a new run of ``name`` (its id is ARGV[2]),
        or None where :func:`submit_blocking` must send it. Runs no Redis command."""
        producer = self._producer
        queue = run.queue or self.celery.conf.task_default_queue
        if producer is None or queue not in self.queues.declared:
            return None
        if isinstance(run.expires, datetime) and run.expires.utcoffset():
            return None  # send_task keeps the client's offset in the message; ours is UTC
        if not can_capture(producer):
            return None  # kombu before 5.7: no publish batches to capture
        if self.messages.unusual(producer) is not None:
            return None
        batch = self._batch
        if batch is None or len(batch.routes) > MAX_ROUTES:
            batch = self._batch = MessageBatch(self.messages, producer)
        run_id = str(uuid.uuid4())
        now = time.time()
        expires = expires_at(run, now)
        with capturing(producer) as capture:
            sent = batch.publish(
                name,
                args=run.args,
                kwargs=run.kwargs,
                task_id=run_id,
                queue=queue,
                priority=run.priority,
                countdown=run.countdown or 0.0,
                expires=expires,
            )
            batch.flush_events()
        prefix = producer.channel.global_keyprefix
        if not sent or not capture.commands:
            return None
        if any(command not in SCRIPTED_COMMANDS for command, _ in capture.commands):
            return None
        keys, args = self.runs.queued_call(
            run_id, name, source="api", args=run.args, kwargs=run.kwargs, expires=expires
        )
        fields = args[7:]
        args = [*args[:7], len(fields) // 2, *fields]
        for command, (key, payload) in capture.commands:
            # The prefix kombu's client adds to the keys of both commands.
            keys.append(prefix + str(key))
            args += [command, payload]
        return keys, args
