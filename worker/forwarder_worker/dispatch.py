"""Sending a schedule's firings to the workers, with concurrencyPolicy, deadline and jitter.

Beat fires due slots through :meth:`Dispatcher.fire` in batches; run-now triggers (operator
annotation, api) use the same path, so every firing is recorded, labelled and policed alike.
Redis work is pipelined per batch: one round trip for the active-run checks, one for the
run records, one for the messages (kombu's publish batch) and one for the metrics, whatever
the batch size.
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

from forwarder_worker.runs import FINAL_STATES, RunLog
from forwarder_worker.settings import settings_of
from forwarder_worker.store import Entry

log = logging.getLogger(__name__)

# Lateness buckets (seconds) of the dispatch-lateness histogram, Prometheus-style.
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Redis commands buffered before kombu flushes a publish pipeline (2 per firing: the message
# and its task-sent event).
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

    def record(self, pipe: Any, *, fired: Sequence[float], skipped: int, missed: int) -> None:
        """Add a batch's figures; ``fired`` holds each sent firing's lateness in seconds."""
        if fired:
            pipe.hincrby(self.key, "fired", len(fired))
            pipe.hincrbyfloat(self.key, "lateness_sum", sum(fired))
            pipe.hincrby(self.key, "lateness_count", len(fired))
            counts: dict[str, int] = {}
            for lateness in fired:
                bucket = next((b for b in LATENESS_BUCKETS if lateness <= b), None)
                name = f"le_{bucket}" if bucket is not None else "le_inf"
                counts[name] = counts.get(name, 0) + 1
            for name, count in counts.items():
                pipe.hincrby(self.key, name, count)
        if skipped:
            pipe.hincrby(self.key, "skipped", skipped)
        if missed:
            pipe.hincrby(self.key, "missed", missed)

    def read(self) -> dict[str, float]:
        """Every counter; lateness buckets as ``le_<seconds>`` (not cumulative)."""
        return {k: float(v) for k, v in self.client.hgetall(self.key).items()}


def publish_batch(producer: Any) -> contextlib.AbstractContextManager[Any]:
    """Pipeline the batch's messages (and their task-sent events) into one Redis round trip
    where kombu can (``Producer.batch``, kombu 5.7+); older kombu publishes one by one."""
    batch = getattr(producer, "batch", None)
    return batch(max_size=PUBLISH_PIPELINE) if batch is not None else contextlib.nullcontext()


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
    ) -> None:
        self.app = app
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

    def fire(self, firings: Sequence[Firing], *, missed: int = 0) -> list[Outcome]:
        """Send ``firings`` (Forbid skips, Replace revokes first) and record every outcome."""
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
                delay = random.uniform(0, entry.jitter) if entry.jitter else 0.0  # noqa: S311
                # The starting deadline counts from the slot (plus its jitter), as CronJob's
                # does: a firing published late has that much less time to start.
                expires = (
                    max(slot + entry.deadline, now) + delay if entry.deadline is not None else None
                )
                plans[outcome.run_id] = (delay, expires)
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

        lateness: list[float] = []
        with self.app.producer_or_acquire() as producer, publish_batch(producer):
            for outcome in sent:
                entry, slot = outcome.firing.entry, outcome.firing.slot
                delay, expires = plans[outcome.run_id]
                options: dict[str, Any] = {"queue": entry.queue}
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
                    task_id=outcome.run_id,
                    producer=producer,
                    headers={
                        HEADER_SCHEDULE: entry.name,
                        HEADER_UID: entry.uid,
                        HEADER_SLOT: repr(slot),
                    },
                    **options,
                )
                if outcome.firing.source == "schedule":
                    lateness.append(max(0.0, self.clock() - slot))
        with self.client.pipeline(transaction=False) as pipe:
            self.metrics.record(
                pipe, fired=lateness, skipped=len(outcomes) - len(sent), missed=missed
            )
            pipe.execute()
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
        return outcomes
