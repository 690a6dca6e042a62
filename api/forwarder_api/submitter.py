"""Submitting a run from the event loop: its run record, Celery message and task-sent event
written by one Redis script, in one round trip, with no threadpool hop.

The reference path (:meth:`Submitter.submit_blocking`) takes a threadpool hop and two round
trips: the run record (:meth:`~forwarder_worker.runs.records.RunLog.queued`), then
``send_task``'s message and task-sent event through kombu. Here the message is built without
``send_task`` by the beat's code (:mod:`forwarder_worker.dispatch.messages`, held to
``send_task``'s messages by its tests), and routed by kombu's own Redis channel code into the
Redis commands kombu would run (an LPUSH on the queue's list for its priority, a PUBLISH of
the grouped task-sent event on the event exchange), which are *kept*, not run: kombu 5.7's
publish batch hands each message's final commands to a collector (``PublishBatch.add``), and
:class:`~forwarder_worker.dispatch.messages.CommandCapture` (shared with beat's claim) is such
a collector. Then one script (the core's submit script) writes the run record with the
run-record transition every writer uses and runs those commands after it, so the record
exists before any worker can see the message (a fast worker's RECEIVED always finds it),
atomically.

The script does nothing if the run's record already exists: run ids are fresh uuid4s, so an
existing record means this very submission already ran (a reply lost to a dropped connection
and the command sent again by the client's retry), and a retry never sends a message twice.

Anything this path does not handle goes to :meth:`Submitter.submit_blocking`, unchanged: a task the
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
from typing import Any, NamedTuple

from celery import Celery
from fastapi.concurrency import run_in_threadpool
from forwarder_worker.dispatch.dispatcher import publish_batch
from forwarder_worker.dispatch.messages import MessageBatch, TaskMessages, can_capture, capturing
from forwarder_worker.runs.records import SUBMIT_COMMANDS, AsyncRunLog, RunLog, RunWrite
from kombu.exceptions import KombuError
from kombu.messaging import Producer

from forwarder_api.catalog import TaskCatalog
from forwarder_api.celery_client import QueueDeclarations
from forwarder_api.models import RunRequest

#: Routes (task, queue, priority) a reused message batch keeps before starting afresh.
MAX_ROUTES = 1000


def expires_at(run: RunRequest, now: float | None = None) -> float | None:
    """When the run's ``expires`` ends it, in epoch seconds (None: never)."""
    if run.expires is None:
        return None
    if isinstance(run.expires, datetime):
        return run.expires.timestamp()
    return (time.time() if now is None else now) + run.expires


class Prepared(NamedTuple):
    """A submission ready for the submit script: the new run's record, when it was made,
    and its message's Redis commands (command, key, payload)."""

    write: RunWrite
    now: float
    commands: list[tuple[str, str, str]]


class Submitter:
    """Submits runs: on the event loop in one round trip where it can, else as
    :meth:`submit_blocking` does."""

    def __init__(
        self,
        celery: Celery,
        runs: RunLog,
        async_runs: AsyncRunLog,
        catalog: TaskCatalog,
        queues: QueueDeclarations,
    ) -> None:
        self.celery = celery
        self.runs = runs
        self.async_runs = async_runs
        self.catalog = catalog
        self.queues = queues
        self.messages = TaskMessages(celery)
        # This submitter's own producer and message batch, used on the event loop only
        # (opened in the threadpool: opening a channel talks to Redis).
        self._producer: Producer | None = None
        self._batch: MessageBatch | None = None
        self._opening = asyncio.Lock()

    async def submit(self, name: str, run: RunRequest) -> str:
        """Check, record and send one run of ``name``; its id."""
        if run.eta is None and self.catalog.required_at_once(name):
            if self._producer is None:
                async with self._opening:
                    if self._producer is None:
                        self._producer = await run_in_threadpool(self._open)
            prepared = self.prepare(name, run)
            if prepared is not None:
                await self.async_runs.submit(*prepared)
                return prepared.write.run_id
        return await run_in_threadpool(self.submit_blocking, name, run)

    def submit_blocking(self, name: str, run: RunRequest) -> str:
        """Check, record and send one run of ``name`` with ``send_task``; its id. Blocks
        (Redis round trips, maybe asking the workers what they registered): run it in the
        threadpool."""
        self.catalog.require(name)
        runs, celery = self.runs, self.celery
        run_id = str(uuid.uuid4())
        # The queue is always named, as beat's dispatcher does (no task routes are
        # configured), so it can be declared once per process and the publish skip the
        # per-message check.
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
                self.queues.ensure(producer, queue)
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

    def _open(self) -> Producer:
        connection = self.celery.connection_for_write()
        return Producer(connection.default_channel, auto_declare=False)  # type: ignore[no-untyped-call]

    def prepare(self, name: str, run: RunRequest) -> Prepared | None:
        """A new run of ``name`` ready for the submit script, or None where
        :meth:`submit_blocking` must send it. Runs no Redis command."""
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
        if any(command not in SUBMIT_COMMANDS for command, _ in capture.commands):
            return None
        write = self.runs.queued_write(
            run_id, name, source="api", args=run.args, kwargs=run.kwargs, expires=expires
        )
        # The prefix kombu's client adds to the keys of both commands.
        commands = [
            (command, prefix + str(key), payload) for command, (key, payload) in capture.commands
        ]
        return Prepared(write, now, commands)
