"""Sending a schedule's firings to the workers, with concurrencyPolicy, deadline and jitter.

Run-now triggers (operator annotation, api) fire through :meth:`Dispatcher.fire` in
batches, and beat uses its parts, so every firing is recorded, labelled and policed alike.
Redis work is pipelined per batch, whatever its size: one round trip for the active-run
checks, one MULTI/EXEC for the run records and their messages (so a run is never recorded as
queued without being sent), one for the task-sent events and one for the metrics. Beat's own
path is cheaper still: it polices its firings with :meth:`Dispatcher.police`, builds their
messages ahead with :meth:`Dispatcher.capture`, and its claim script writes the run records
and puts the messages on their queues in one atomic step; its metrics ride along with its
next read (see :mod:`forwarder_worker.beat.scheduler`). The messages themselves are Celery's,
built without ``send_task`` per message (see :mod:`forwarder_worker.dispatch.messages`).
"""

from __future__ import annotations

import contextlib
import json
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

from forwarder_worker.dispatch.messages import MessageBatch, TaskMessages, can_capture, capturing
from forwarder_worker.dispatch.metrics import SchedulerMetrics
from forwarder_worker.names import (
    HEADER_RETRY,
    HEADER_SCHEDULE,
    HEADER_SLOT,
    HEADER_UID,
    OVERLAP_SKIP,
    RUN_NOW_OVERRIDES_ANNOTATION,
    TIMEOUT_GRACE_SECONDS,
)
from forwarder_worker.runs.records import FINAL_STATES, ActiveRun, RunLog
from forwarder_worker.schedules.store import Entry
from forwarder_worker.values import check_json_value

log = logging.getLogger(__name__)

# Redis commands buffered before kombu flushes a publish pipeline (about 1 per firing with
# prebuilt messages, whose task-sent events go 100 to a command; 2 through send_task).
PUBLISH_PIPELINE = 1000

# Seconds past the hard time limit after which a STARTED run counts as dead (see _active).
STALE_RUN_GRACE = 30

BACKFILL = "backfill"
"""The source of a backfilled slot's run (see :mod:`forwarder_worker.dispatch.backfill`)."""


@dataclass(frozen=True)
class Overrides:
    """A run-now's own arguments (the API's trigger, the operator's run-now annotation):
    ``args`` replace the spec's, ``kwargs`` are merged over the spec's. None: the spec's."""

    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """What the run record keeps: only the parts given."""
        given: dict[str, Any] = {}
        if self.args is not None:
            given["args"] = self.args
        if self.kwargs is not None:
            given["kwargs"] = self.kwargs
        return given


def parse_overrides(text: str, value: str) -> Overrides | None:
    """The overrides that the run-now overrides annotation (``text``, JSON
    ``{"runNow": ..., "args": [...], "kwargs": {...}}``) gives run-now ``value``: None when
    it names another value (it was written for an earlier run-now). ValueError says what is
    wrong with a malformed one."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # RecursionError: nested past the decoder's limit, which an annotation's 256 KB allows.
        raise ValueError(f"{RUN_NOW_OVERRIDES_ANNOTATION} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{RUN_NOW_OVERRIDES_ANNOTATION} must be a JSON object")
    unknown = sorted(set(data) - {"runNow", "args", "kwargs"})
    if unknown:
        raise ValueError(f"{RUN_NOW_OVERRIDES_ANNOTATION}: unknown fields {', '.join(unknown)}")
    if data.get("runNow") != value:
        return None
    args, kwargs = data.get("args"), data.get("kwargs")
    if args is not None and not isinstance(args, list):
        raise ValueError(f"{RUN_NOW_OVERRIDES_ANNOTATION}: args must be a JSON array")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(f"{RUN_NOW_OVERRIDES_ANNOTATION}: kwargs must be a JSON object")
    for name, part in (("args", args), ("kwargs", kwargs)):
        try:
            check_json_value(part)  # the bounds the api's trigger and a spec's own keep
        except ValueError as exc:
            raise ValueError(f"{RUN_NOW_OVERRIDES_ANNOTATION}: {name} {exc}") from None
    return Overrides(args, kwargs)


def overrides_annotation(value: str, overrides: Overrides) -> str:
    """The run-now overrides annotation for run-now ``value`` (read by :func:`parse_overrides`)."""
    return json.dumps({"runNow": value, **overrides.as_json()}, separators=(",", ":"))


@dataclass(frozen=True)
class Firing:
    """One slot of one entry to fire now, with a run-now's overrides, if any."""

    entry: Entry
    slot: float
    source: str = "schedule"  # or "trigger", or BACKFILL
    overrides: Overrides | None = None

    @property
    def args(self) -> list[Any]:
        """The positional arguments the run gets: the override's, else the spec's."""
        given = self.overrides.args if self.overrides is not None else None
        return self.entry.args if given is None else given

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments the run gets: the override's merged over the spec's."""
        given = self.overrides.kwargs if self.overrides is not None else None
        return self.entry.kwargs if not given else {**self.entry.kwargs, **given}


#: A firing to publish: (firing, run id, jitter delay, expiry or None).
Send = tuple[Firing, str, float, float | None]
#: A captured message: the (list key, payload) LPUSHes that put it on its queue.
Push = list[tuple[str, str]]


@dataclass(frozen=True)
class Outcome:
    """What became of a firing: the run id, and whether it was sent or skipped."""

    firing: Firing
    run_id: str
    sent: bool
    reason: str | None = None


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
        metrics: SchedulerMetrics,
        *,
        stale_after: float,
        time_limit: int | None = None,
    ) -> None:
        self.app = app
        # Build messages without send_task (forwarder_worker.dispatch.messages); False:
        # send_task only (the reference path the tests and the benchmarks compare with).
        self.prebuilt = True
        self.messages = TaskMessages(app)
        self.client = client
        self.runs = runs
        self.metrics = metrics
        # Seconds after which a STARTED run counts as dead (see _active).
        self.stale_after = stale_after
        # The workers' hard time limit: a schedule's timeoutSeconds may only lower it (the
        # broker's visibility timeout is sized for it, see time_limits).
        self.time_limit = time_limit

    def time_limits(self, entry: Entry) -> tuple[int, int] | None:
        """The (hard, soft) time limits of ``entry``'s runs, or None for the workers' own.

        ``timeoutSeconds`` is the soft limit, an exception in the task (retried under a
        retry policy); the hard limit kills the process :data:`TIMEOUT_GRACE_SECONDS` later.
        Never above the workers' hard limit: the broker redelivers a message still unacked
        after twice that (the visibility timeout), so a longer run would run twice."""
        if entry.timeout is None:
            return None
        if self.time_limit is not None and entry.timeout >= self.time_limit:
            return None
        hard = entry.timeout + TIMEOUT_GRACE_SECONDS
        if self.time_limit is not None:
            hard = min(hard, self.time_limit)
        return hard, entry.timeout

    def _active(self, firings: Sequence[Firing], now: float) -> dict[str, list[str]]:
        """Runs still going per schedule, for the entries whose policy cares."""
        names = sorted({f.entry.name for f in firings if f.entry.policy != "Allow"})
        if not names:
            return {}
        # Run records carry wall-clock times, whatever clock the scheduler fires by.
        wall_now = time.time()

        def alive(run: ActiveRun) -> bool:
            if run.state is None or run.state in FINAL_STATES:
                return False
            # A queued run past its expiry will be discarded by the worker that receives it.
            if run.state == "PENDING" and run.expires and run.expires < now:
                return False
            # Started longer ago than the hard time limit allows: its worker died without a
            # final signal, so it must not hold Forbid until the broker redelivers it.
            if run.state == "STARTED" and run.started and wall_now - run.started > self.stale_after:
                return False
            # Waiting for a retry (Celery's RETRY) is active: the next attempt will run. Unless
            # that attempt was due longer ago than a run may last, and never started: its
            # message is lost (Redis lost it, or the worker holding it died).
            return not (
                run.state == "RETRY" and run.retry_at and wall_now - run.retry_at > self.stale_after
            )

        return {
            name: [run.id for run in runs if alive(run)]
            for name, runs in self.runs.active(names).items()
        }

    def plan(self, firing: Firing, now: float) -> tuple[float, float | None]:
        """The jitter delay and the expiry (epoch seconds, None: none) of a firing sent now."""
        entry, slot = firing.entry, firing.slot
        # Jitter only spreads the load: it needs no unpredictable random numbers.
        delay = random.uniform(0, entry.jitter) if entry.jitter else 0.0  # noqa: S311  # nosec B311
        # The starting deadline counts from the slot (plus its jitter), as CronJob's does: a
        # firing published late has that much less time to start. A backfilled slot is past
        # on purpose: its deadline counts from now, or it could never start.
        start = now if firing.source == BACKFILL else slot
        expires = max(start + entry.deadline, now) + delay if entry.deadline is not None else None
        return delay, expires

    def declare(self, producer: Any, sends: Sequence[Send]) -> None:
        """Declare the queues of ``sends`` once for their batch.

        Not once per message as send_task does by default: kombu caches declarations per
        connection either way, but checking that cache per message (binding and copying the
        entity) was a quarter of the publish cost. Messages then pass ``declare=[]``."""
        for name in dict.fromkeys(firing.entry.queue for firing, *_ in sends):
            producer.maybe_declare(self.app.amqp.queues[name])

    def capture(
        self, producer: Any, sends: Sequence[Send]
    ) -> tuple[list[Push | None], MessageBatch | None]:
        """Build the messages of ``sends`` without sending them: per send, the (list key,
        payload) LPUSHes that put it on its queue, for the caller to run in its own script
        (beat's claim), or None where it must be published (:meth:`publish`) instead. Also
        the message batch holding their task-sent events, to flush once they are sent.

        Most payloads are built whole (:meth:`MessageBatch.payload`); the others go through
        kombu's publish with its Redis commands captured. Runs no Redis command but the
        queues' declarations. Everything
        :meth:`TaskMessages.start` or :meth:`MessageBatch.publish` declines is None, as is
        a message kombu would send with more than an LPUSH (a queue with an expiry)."""
        out: list[Push | None] = [None] * len(sends)
        if not sends or not self.prebuilt or not can_capture(producer):
            return out, None
        self.declare(producer, sends)
        built = self.messages.start(producer)
        if built is None:
            return out, None
        built.hold_events = True
        prefix = producer.channel.global_keyprefix or ""
        rebuilt: set[str] = set()
        for k, (firing, run_id, delay, expires) in enumerate(sends):
            whole = built.payload(
                firing.entry.task, **self._message_options(firing, run_id, delay, expires)
            )
            if whole is not None:  # the payload kombu would push, built whole
                out[k] = [whole]
                continue
            with capturing(producer) as capture:
                sent = self._build(built, firing, run_id, delay, expires)
            if sent and capture.commands and all(c == "lpush" for c, _ in capture.commands):
                # kombu's client adds the global key prefix to the keys it is given.
                out[k] = [(prefix + str(key), payload) for _, (key, payload) in capture.commands]
            elif sent:
                rebuilt.add(run_id)  # publish() builds its message and event again
        built.drop_events(rebuilt)
        return out, built

    def complete(
        self,
        producer: Any,
        sent: Sequence[tuple[Send, Push | None]],
        built: MessageBatch | None,
        *,
        first_flush: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> list[float]:
        """Once the captured messages of ``sent`` are on their queues (``built`` from
        :meth:`capture`, holding only the events of ``sent``): publish the messages that were
        not captured, and the task-sent events. Returns each scheduled firing's lateness by
        ``clock`` (the scheduler's, which its slots are on)."""
        landed = clock()
        lateness = [
            max(0.0, landed - firing.slot)
            for (firing, *_), push in sent
            if push is not None and firing.source == "schedule"
        ]
        later = [send for send, push in sent if push is None]
        if later or (built is not None and built.events):
            lateness += self.publish(
                later, first_flush=first_flush, producer=producer, built=built, clock=clock
            )
        return lateness

    def _build(
        self,
        built: MessageBatch,
        firing: Firing,
        run_id: str,
        delay: float,
        expires: float | None,
    ) -> bool:
        """Publish one firing's message through ``built``; False where it declines."""
        return built.publish(
            firing.entry.task, **self._message_options(firing, run_id, delay, expires)
        )

    def _message_options(
        self, firing: Firing, run_id: str, delay: float, expires: float | None
    ) -> dict[str, Any]:
        """The options of one firing's message for :class:`MessageBatch`."""
        entry = firing.entry
        return {
            "args": firing.args,
            "kwargs": firing.kwargs,
            "task_id": run_id,
            "queue": entry.queue,
            "priority": entry.priority,
            "countdown": delay,
            "expires": expires,
            "headers": Dispatcher.headers(firing),
            "time_limits": self.time_limits(entry),
        }

    @staticmethod
    def headers(firing: Firing) -> dict[str, Any]:
        """Forwarder's own message headers for ``firing`` (its retry policy, if any)."""
        headers: dict[str, Any] = {
            HEADER_SCHEDULE: firing.entry.name,
            HEADER_UID: firing.entry.uid,
            HEADER_SLOT: repr(firing.slot),
        }
        if firing.entry.retries:
            headers[HEADER_RETRY] = firing.entry.retries
        return headers

    def publish(
        self,
        sends: Sequence[Send],
        *,
        first_flush: int = 0,
        producer: Any = None,
        built: MessageBatch | None = None,
        clock: Callable[[], float] = time.time,
    ) -> list[float]:
        """Publish (firing, run id, delay, expires) messages whose run records are written;
        returns the lateness of each scheduled firing. With ``first_flush``, the first that
        many messages are flushed to Redis before the rest are built, so the head of a large
        batch lands without waiting for the whole batch to be built. With ``producer`` and
        ``built`` (from :meth:`capture`), the events ``built`` holds are flushed as well.

        Messages are built by :mod:`forwarder_worker.dispatch.messages` (a fifth of send_task's CPU
        per message, measured); a firing it declines, or every firing when ``prebuilt`` is
        off, goes through ``send_task`` as before."""
        if producer is not None:
            return self._publish(producer, built, sends, first_flush, clock)
        with self.app.producer_or_acquire() as acquired:
            return self._publish(acquired, built, sends, first_flush, clock)

    def _publish(
        self,
        producer: Any,
        built: MessageBatch | None,
        sends: Sequence[Send],
        first_flush: int,
        clock: Callable[[], float],
    ) -> list[float]:
        lateness: list[float] = []
        with publish_batch(producer) as batch:
            self.declare(producer, sends)
            if built is None and self.prebuilt:
                built = self.messages.start(producer)
            for k, (firing, run_id, delay, expires) in enumerate(sends):
                if built is None or not self._build(built, firing, run_id, delay, expires):
                    self._send_task(producer, firing, run_id, delay, expires)
                if firing.source == "schedule":
                    lateness.append(max(0.0, clock() - firing.slot))
                if k + 1 == first_flush and k + 1 < len(sends) and batch is not None:
                    if built is not None:
                        built.flush_events()
                    batch.flush()
            if built is not None:
                built.flush_events()
        return lateness

    def _send_task(
        self, producer: Any, firing: Firing, run_id: str, delay: float, expires: float | None
    ) -> None:
        """Publish one firing with Celery's ``send_task`` (the reference path)."""
        entry = firing.entry
        options: dict[str, Any] = {"queue": entry.queue, "declare": []}
        if entry.priority is not None:
            options["priority"] = entry.priority
        if delay:
            options["countdown"] = delay
        if expires is not None:
            options["expires"] = datetime.fromtimestamp(expires, UTC)
        limits = self.time_limits(entry)
        if limits is not None:
            options["time_limit"], options["soft_time_limit"] = limits
        self.app.send_task(
            entry.task,
            args=firing.args,
            kwargs=firing.kwargs,
            task_id=run_id,
            producer=producer,
            headers=self.headers(firing),
            **options,
        )

    def police(self, firings: Sequence[Firing], now: float) -> tuple[list[Outcome], list[str]]:
        """Apply concurrencyPolicy to ``firings``: an outcome each (sent, or skipped by
        Forbid, with a fresh run id either way), and the runs Replace must revoke first."""
        active = self._active(firings, now)
        outcomes: list[Outcome] = []
        to_revoke: list[str] = []
        seen: set[str] = set()
        # Several firings of one Replace entry in beat's batch (missedRunPolicy All's missed
        # slots): each would replace the one before at once, so only the last is sent. A
        # backfill asks for every slot of its window to run: its firings replace the runs
        # active before it, not one another (docs/scheduling.md, Backfill).
        last = {
            f.entry.name: f.slot
            for f in firings
            if f.entry.policy == "Replace" and f.source != BACKFILL
        }
        for firing in firings:
            name, run_id = firing.entry.name, str(uuid.uuid4())
            running = active.get(name, [])
            if firing.entry.policy == "Forbid" and (running or name in seen):
                reason = (
                    f"{OVERLAP_SKIP} Forbid: run {running[0] if running else 'queued'} is active"
                )
                outcomes.append(Outcome(firing, run_id, False, reason))
                continue
            if firing.entry.policy == "Replace" and firing.slot != last.get(name, firing.slot):
                reason = f"{OVERLAP_SKIP} Replace: replaced by the slot {last[name]!r}"
                outcomes.append(Outcome(firing, run_id, False, reason))
                continue
            if firing.entry.policy == "Replace" and running:
                to_revoke.extend(running)
            seen.add(name)
            outcomes.append(Outcome(firing, run_id, True))
        return outcomes, to_revoke

    def revoke(self, run_ids: Sequence[str]) -> None:
        """Terminate the runs being replaced; revoked ids also stop queued copies."""
        if run_ids:
            self.app.control.revoke(list(run_ids), terminate=True, signal="SIGTERM")

    def fire(self, firings: Sequence[Firing]) -> list[Outcome]:
        """Send ``firings`` (Forbid skips, Replace revokes first), record every outcome and
        write the metrics.

        The run records and the messages built ahead (:meth:`capture`) go to Redis in one
        MULTI/EXEC, so a process that dies or loses Redis on the way leaves both or neither:
        never a run recorded as queued whose message was never sent, which would hold a
        Forbid schedule until the record expired. Messages that cannot be built ahead are
        published right after, as before."""
        now = time.time()
        outcomes, to_revoke = self.police(firings, now)
        self.revoke(to_revoke)
        sends: list[Send] = []
        with self.app.producer_or_acquire() as producer:
            with self.client.pipeline(transaction=True) as pipe:
                for outcome in outcomes:
                    entry, slot = outcome.firing.entry, outcome.firing.slot
                    if not outcome.sent:
                        skipped = self.runs.skipped_write(
                            outcome.run_id,
                            entry.task,
                            schedule=entry.name,
                            slot=slot,
                            reason=outcome.reason or "skipped",
                        )
                        self.runs.write(skipped, client=pipe)
                        continue
                    delay, expires = self.plan(outcome.firing, now)
                    sends.append((outcome.firing, outcome.run_id, delay, expires))
                    overrides = outcome.firing.overrides
                    self.runs.queued(
                        outcome.run_id,
                        entry.task,
                        source=outcome.firing.source,
                        schedule=entry.name,
                        slot=slot,
                        args=outcome.firing.args,
                        kwargs=outcome.firing.kwargs,
                        overrides=None if overrides is None else overrides.as_json(),
                        expires=expires,
                        client=pipe,
                    )
                captured, built = self.capture(producer, sends)
                for push in captured:
                    for key, payload in push or ():
                        pipe.lpush(key, payload)
                pipe.execute()
            lateness = self.complete(producer, list(zip(sends, captured, strict=True)), built)
        self.count(lateness, skipped=len(outcomes) - len(sends))
        self.log_outcomes(outcomes)
        return outcomes

    def count(self, lateness: Sequence[float], *, skipped: int) -> None:
        """Add fired (their lateness) and skipped firings to the scheduler's metrics."""
        increments = self.metrics.increments(fired=list(lateness), skipped=skipped, missed=0)
        if increments:
            with self.client.pipeline(transaction=False) as pipe:
                self.metrics.add(pipe, increments)
                pipe.execute()

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
