"""Sending a schedule's firings to the workers, with concurrencyPolicy, deadline and jitter.

Beat fires due slots through :meth:`Dispatcher.fire` in batches; run-now triggers (operator
annotation, api) use the same path, so every firing is recorded, labelled and policed alike.
Redis work is pipelined per batch: one round trip for the active-run checks, one for the
run records, one for the messages (kombu's publish batch) and one for the metrics, whatever
the batch size. Beat's own path for concurrencyPolicy Allow is cheaper still: its claim script
writes the run records, it publishes with :meth:`Dispatcher.publish`, and its metrics ride
along with its next read (see :mod:`forwarder_worker.scheduler`). The messages themselves
are Celery's, built without ``send_task`` per message (see :mod:`forwarder_worker.messages`).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery

from forwarder_worker.messages import TaskMessages
from forwarder_worker.runs import FINAL_STATES, RunLog
from forwarder_worker.settings import settings_of
from forwarder_worker.store import Entry

log = logging.getLogger(__name__)

# Lateness buckets (seconds) of the dispatch-lateness histogram, Prometheus-style.
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Redis commands buffered before kombu flushes a publish pipeline (about 1 per firing with
# prebuilt messages, whose task-sent events go 100 to a command; 2 through send_task).
PUBLISH_PIPELINE = 1000

# Seconds past the hard time limit after which a STARTED run counts as dead (see _active).
STALE_RUN_GRACE = 30

HEADER_SCHEDULE = "forwarder_schedule"
HEADER_UID = "forwarder_uid"
HEADER_SLOT = "forwarder_slot"


@dataclass(frozen=True)
class Firing:
    """One slot of one entry to fire now."""

    entry: Entry
    slot: float
    source: str = "schedule"  # or "trigger"


@dataclass(frozen=True)
class Outcome:
    """What became of a firing: the run id, and whether it was sent or skipped."""

    firing: Firing
    run_id: str
    sent: bool
    reason: str | None = None


class SchedulerMetrics:
    """Fire, skip and lateness counters, kept in one Redis hash so any process can read them."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.key = f"{prefix}:metrics"

    @staticmethod
    def increments(
        *, fired: Sequence[float], skipped: int, missed: int
    ) -> list[tuple[str, int | float]]:
        """A batch's figures as (counter, increment) pairs; ``fired`` holds each sent
        firing's lateness in seconds."""
        out: list[tuple[str, int | float]] = []
        if fired:
            out += [
                ("fired", len(fired)),
                ("lateness_sum", sum(fired)),
                ("lateness_count", len(fired)),
            ]
            counts: dict[str, int] = {}
            for lateness in fired:
                bucket = next((b for b in LATENESS_BUCKETS if lateness <= b), None)
                name = f"le_{bucket}" if bucket is not None else "le_inf"
                counts[name] = counts.get(name, 0) + 1
            out += counts.items()
        if skipped:
            out.append(("skipped", skipped))
        if missed:
            out.append(("missed", missed))
        return out

    def record(self, pipe: Any, *, fired: Sequence[float], skipped: int, missed: int) -> None:
        """Add a batch's figures; ``fired`` holds each sent firing's lateness in seconds."""
        self.add(pipe, self.increments(fired=fired, skipped=skipped, missed=missed))

    def add(self, pipe: Any, increments: Sequence[tuple[str, int | float]]) -> None:
        """Add (counter, increment) pairs through ``pipe`` (or a client)."""
        for name, value in increments:
            if isinstance(value, float):
                pipe.hincrbyfloat(self.key, name, value)
            else:
                pipe.hincrby(self.key, name, value)

    def read(self) -> dict[str, float]:
        """Every counter; lateness buckets as ``le_<seconds>`` (not cumulative)."""
        return {k: float(v) for k, v in self.client.hgetall(self.key).items()}


def publish_batch(producer: Any) -> contextlib.AbstractContextManager[Any]:
    """Pipeline the batch's messages (and their task-sent events) into one Redis round trip
    where kombu can (``Producer.batch``, kombu 5.7+); older kombu publishes one by one."""
    batch = getattr(producer, "batch", None)
    return batch(max_size=PUBLISH_PIPELINE) if batch is not None else contextlib.nullcontext(None)


class Dispatcher:
    """Sends firings as Celery tasks and records each one."""

    def __init__(
        self,
        app: Celery,
        client: redis.Redis,
        runs: RunLog,
        prefix: str,
        *,
        clock: Callable[[], float] = time.time,
        prebuilt: bool = True,
    ) -> None:
        self.app = app
        # Build messages without send_task (forwarder_worker.messages); False: send_task only.
        self.prebuilt = prebuilt
        self.messages = TaskMessages(app)
        self.client = client
        self.runs = runs
        self.metrics = SchedulerMetrics(client, prefix)
        # The scheduler's clock, so lateness and deadlines read the same time as its slots.
        self.clock = clock

    def _active(self, firings: Sequence[Firing], now: float) -> dict[str, list[str]]:
        """Runs still going per schedule, for the entries whose policy cares."""
        names = sorted({f.entry.name for f in firings if f.entry.policy != "Allow"})
        if not names:
            return {}
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.smembers(f"{self.runs.prefix}runs:active:{name}")
            members = dict(zip(names, pipe.execute(), strict=True))
        ids = sorted({i for ms in members.values() for i in ms})
        with self.client.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hmget(self.runs.key(run_id), "state", "expires", "started")
            states = dict(zip(ids, pipe.execute(), strict=True))
        # Run records carry wall-clock times, whatever clock the scheduler fires by.
        wall_now = time.time()
        stale_after = settings_of(self.app).task_time_limit + STALE_RUN_GRACE

        def alive(run_id: str) -> bool:
            state, expires, started = states[run_id]
            if state is None or state in FINAL_STATES:
                return False
            # A queued run past its expiry will be discarded by the worker that receives it.
            if state == "PENDING" and expires and float(expires) < now:
                return False
            # Started longer ago than the hard time limit allows: its worker died without a
            # final signal, so it must not hold Forbid until the broker redelivers it.
            return not (state == "STARTED" and started and wall_now - float(started) > stale_after)

        return {name: sorted(i for i in ms if alive(i)) for name, ms in members.items()}

    def plan(self, firing: Firing, now: float) -> tuple[float, float | None]:
        """The jitter delay and the expiry (epoch seconds, None: none) of a firing sent now."""
        entry, slot = firing.entry, firing.slot
        delay = random.uniform(0, entry.jitter) if entry.jitter else 0.0  # noqa: S311
        # The starting deadline counts from the slot (plus its jitter), as CronJob's does: a
        # firing published late has that much less time to start.
        expires = max(slot + entry.deadline, now) + delay if entry.deadline is not None else None
        return delay, expires

    def publish(
        self, sends: Sequence[tuple[Firing, str, float, float | None]], *, first_flush: int = 0
    ) -> list[float]:
        """Publish (firing, run id, delay, expires) messages whose run records are written;
        returns the lateness of each scheduled firing. With ``first_flush``, the first that
        many messages are flushed to Redis before the rest are built, so the head of a large
        batch lands without waiting for the whole batch to be built.

        Messages are built by :mod:`forwarder_worker.messages` (a fifth of send_task's CPU
        per message, measured); a firing it declines, or every firing when ``prebuilt`` is
        off, goes through ``send_task`` as before."""
        lateness: list[float] = []
        with self.app.producer_or_acquire() as producer, publish_batch(producer) as batch:
            # Each queue is declared once per batch, not once per message as send_task does
            # by default: kombu caches declarations per connection either way, but checking
            # that cache per message (binding and copying the entity) was a quarter of the
            # publish cost. `declare=[]` below then skips the per-message check.
            for name in dict.fromkeys(firing.entry.queue for firing, *_ in sends):
                producer.maybe_declare(self.app.amqp.queues[name])
            built = self.messages.start(producer) if self.prebuilt else None
            for k, (firing, run_id, delay, expires) in enumerate(sends):
                entry, slot = firing.entry, firing.slot
                headers = {
                    HEADER_SCHEDULE: entry.name,
                    HEADER_UID: entry.uid,
                    HEADER_SLOT: repr(slot),
                }
                if built is None or not built.publish(
                    entry.task,
                    args=entry.args,
                    kwargs=entry.kwargs,
                    task_id=run_id,
                    queue=entry.queue,
                    priority=entry.priority,
                    countdown=delay,
                    expires=expires,
                    headers=headers,
                ):
                    self._send_task(producer, entry, run_id, delay, expires, headers)
                if firing.source == "schedule":
                    lateness.append(max(0.0, self.clock() - slot))
                if k + 1 == first_flush and k + 1 < len(sends) and batch is not None:
                    if built is not None:
                        built.flush_events()
                    batch.flush()
            if built is not None:
                built.flush_events()
        return lateness

    def _send_task(
        self,
        producer: Any,
        entry: Entry,
        run_id: str,
        delay: float,
        expires: float | None,
        headers: dict[str, str],
    ) -> None:
        """Publish one firing with Celery's ``send_task`` (the reference path)."""
        options: dict[str, Any] = {"queue": entry.queue, "declare": []}
        if entry.priority is not None:
            options["priority"] = entry.priority
        if delay:
            options["countdown"] = delay
        if expires is not None:
            options["expires"] = datetime.fromtimestamp(expires, UTC)
        self.app.send_task(
            entry.task,
            args=entry.args,
            kwargs=entry.kwargs,
            task_id=run_id,
            producer=producer,
            headers=headers,
            **options,
        )

    def fire(
        self,
        firings: Sequence[Firing],
        *,
        missed: int = 0,
        metrics_out: list[tuple[str, int | float]] | None = None,
    ) -> list[Outcome]:
        """Send ``firings`` (Forbid skips, Replace revokes first) and record every outcome.

        The metrics are written at once, or appended to ``metrics_out`` for the caller to
        write with its next round trip (beat does)."""
        now = self.clock()
        active = self._active(firings, now)
        outcomes: list[Outcome] = []
        to_revoke: list[str] = []
        seen: set[str] = set()
        for firing in firings:
            name, run_id = firing.entry.name, str(uuid.uuid4())
            running = active.get(name, [])
            if firing.entry.policy == "Forbid" and (running or name in seen):
                reason = (
                    f"concurrencyPolicy Forbid: run {running[0] if running else 'queued'} is active"
                )
                outcomes.append(Outcome(firing, run_id, False, reason))
                continue
            if firing.entry.policy == "Replace" and running:
                to_revoke.extend(running)
            seen.add(name)
            outcomes.append(Outcome(firing, run_id, True))
        if to_revoke:
            # Terminate the runs being replaced; revoked ids also stop queued copies.
            self.app.control.revoke(to_revoke, terminate=True, signal="SIGTERM")

        sent = [o for o in outcomes if o.sent]
        plans: dict[str, tuple[float, float | None]] = {}
        with self.client.pipeline(transaction=False) as pipe:
            for outcome in outcomes:
                entry, slot = outcome.firing.entry, outcome.firing.slot
                if not outcome.sent:
                    self.runs.skipped(
                        outcome.run_id,
                        entry.task,
                        schedule=entry.name,
                        slot=slot,
                        reason=outcome.reason or "skipped",
                        client=pipe,
                    )
                    continue
                _, expires = plans[outcome.run_id] = self.plan(outcome.firing, now)
                self.runs.queued(
                    outcome.run_id,
                    entry.task,
                    source=outcome.firing.source,
                    schedule=entry.name,
                    slot=slot,
                    args=entry.args,
                    kwargs=entry.kwargs,
                    client=pipe,
                )
                if expires is not None:
                    self.runs.transition(outcome.run_id, "PENDING", client=pipe, expires=expires)
            pipe.execute()

        lateness = self.publish([(o.firing, o.run_id, *plans[o.run_id]) for o in sent])
        increments = self.metrics.increments(
            fired=lateness, skipped=len(outcomes) - len(sent), missed=missed
        )
        if metrics_out is not None:
            metrics_out.extend(increments)
        elif increments:
            with self.client.pipeline(transaction=False) as pipe:
                self.metrics.add(pipe, increments)
                pipe.execute()
        self.log_outcomes(outcomes)
        return outcomes

    @staticmethod
    def log_outcomes(outcomes: Sequence[Outcome]) -> None:
        """One INFO line per firing, sent or skipped."""
        if not log.isEnabledFor(logging.INFO):
            return
        for outcome in outcomes:
            if outcome.sent:
                log.info(
                    "fired %s (%s) slot %s as %s",
                    outcome.firing.entry.name,
                    outcome.firing.entry.task,
                    outcome.firing.slot,
                    outcome.run_id,
                )
            else:
                log.info(
                    "skipped %s slot %s: %s",
                    outcome.firing.entry.name,
                    outcome.firing.slot,
                    outcome.reason,
                )
