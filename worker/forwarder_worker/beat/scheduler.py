"""Forwarder's Celery Beat scheduler: prompt, time-zone-correct, batched and highly available.

Use it with ``celery -A forwarder_worker.app beat -S``
``forwarder_worker.beat.scheduler:ForwarderScheduler``.

It keeps celery-redbeat's storage model (see :mod:`forwarder_worker.schedules.store`) and
its lock idea, and replaces the parts of ``redbeat.RedBeatScheduler`` that are weak, which is
why it is not a subclass of it:

* redbeat sleeps up to ``beat_max_loop_interval`` (300 s); this beat blocks on the store's wake
  list (BLPOP) until the next due time, so a new or changed entry is armed at once;
* redbeat loads and sends due entries one by one; this beat loads, claims, records and sends
  them in batches with pipelined Redis work, picked round-robin across namespaces from the
  earliest and the latest due entries, so a burst is drained in bounded batches and another
  namespace's entry that falls due meanwhile waits one batch, not the whole burst;
* redbeat's lock times out after 5 times the loop interval (25 min); this lock times out after
  ``beat_lock_timeout`` seconds, a standby sleeps exactly until the holder's lease would end,
  and each slot is claimed by compare-and-set, so two beats never fire the same slot;
* redbeat saves an entry's last run and sends its message in separate steps; here the claim
  script writes the run record and puts the message on its queue, so a beat killed (or a
  Redis lost) at any point neither loses a claimed slot nor leaves a run queued that was
  never sent;
* cron entries carry an IANA zone (see :mod:`forwarder_worker.schedules.timing`), suspend
  leaves the due set, and missed slots after downtime fire at most once, within the starting
  deadline (the Kubernetes CronJob rule).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, NamedTuple

import redis
from celery import Celery
from celery.beat import Scheduler
from kombu import exceptions as kombu_errors
from kombu.exceptions import OperationalError

from forwarder_worker._redis.scripts import Claim, RunWrite
from forwarder_worker.core import require_core
from forwarder_worker.dispatch.dispatcher import Dispatcher, Firing, Outcome, Push, Send
from forwarder_worker.dispatch.messages import MessageBatch, uuid4_strings
from forwarder_worker.dispatch.metrics import SchedulerMetrics
from forwarder_worker.names import MAX_MISSED_RUNS
from forwarder_worker.schedules.store import TIMEOUT_SLACK, Meta, StoredEntry

log = logging.getLogger("forwarder.beat")

# Upper bound on slots walked to find the latest missed one after a long downtime.
_MAX_MISSED_WALK = 100_000
# Each batch is picked round-robin across namespaces from this many batches' worth of the
# earliest due entries plus one batch of the latest due (ScheduleStore.due): a burst in one
# namespace then delays another namespace's entry by one batch, not by the whole burst, while
# each read stays bounded.
FAIR_WINDOW_BATCHES = 10
# Seconds before beat looks again at an entry whose next firing it could not compute.
BAD_ENTRY_RETRY = 60.0
# The first batch of a burst (a pass after a pass that was not full) is this small, so the
# head of a burst is published without waiting for a whole batch to be built and claimed.
# (Messages published after the claim flush this many first, for the same reason.)
FIRST_BATCH = 50
# Seconds a thread holds the GIL before another may take it, in beat once it drains a backlog
# (see ForwarderScheduler._claimer).
GIL_SWITCH_INTERVAL = 0.001
# What a publish batch raises when Redis fails while its pipeline is sent (kombu 5.7+; older
# kombu publishes message by message and raises OperationalError).
BATCH_PUBLISH_ERROR: type[Exception] = getattr(
    kombu_errors, "BatchPublishError", kombu_errors.OperationalError
)
# Beat's metrics ride along with its next read; before a wait at least this long (seconds)
# they are written on their own, so an idle beat's counters are never stale for long.
METRICS_FLUSH_WAIT = 0.2
MISSED_REASON = "missed: the starting deadline passed before the slot could fire"
SKIP_REASON = "missed: missedRunPolicy Skip fires no slot that passed while beat was away"
# Every reason a slot is recorded SKIPPED as missed starts so (the others are policies').
MISSED = "missed:"


class FiringPlan(NamedTuple):
    """What a due entry's claim does: the slots it records, oldest first (each with the
    reason it is skipped, or None to send it), the slots missed, the new meta and the next
    due time (before :func:`settle` counts the firings)."""

    stored: StoredEntry
    slots: list[tuple[float, str | None]]
    missed: int
    meta: Meta
    due: float | None


def plan_firing(stored: StoredEntry, now: float, grace: float = 10.0) -> FiringPlan:
    """Plan the claim of a due entry at ``now``: every slot that passed since its due time is
    walked; which of them are recorded depends on its missedRunPolicy, always within its
    starting deadline:

    * Latest (CronJob's rule): the latest passed slot fires; the older ones are missed.
    * All: every passed slot fires, oldest first, at most MAX_MISSED_RUNS (the latest of
      them); when more passed, the oldest dropped one is recorded SKIPPED saying so.
    * Skip: only a slot reached within ``grace`` seconds (beat's lock timeout: a failover
      leaves slots that late) fires; the others are missed.

    The meta counts the missed slots and the excluded slots stepped over, not the firings:
    whether a slot is sent is known only after concurrencyPolicy (:func:`settle`)."""
    entry, meta = stored.entry, stored.meta
    read_due = stored.due_time()
    timetable = entry.timetable(meta.anchor)

    def in_time(slot: float) -> bool:
        return entry.deadline is None or now - slot <= entry.deadline

    # The due time is a slot, or a checkpoint in a long exclusion (timing.MAX_EXCLUDED_WALK)
    # that only moves the walk on.
    latest: float | None = read_due if timetable.fires(read_due) else None
    walked = 0  # passed slots after the first
    # For All: the latest passed slots within the deadline, and how many there were.
    recent: deque[float] = deque(maxlen=MAX_MISSED_RUNS)
    if latest is not None and in_time(latest):
        recent.append(latest)
    in_time_count = len(recent)
    dropped: float | None = None
    step = timetable.step(read_due)
    excluded = step.excluded
    steps = 0
    while step.slot is not None and step.slot <= now and steps < _MAX_MISSED_WALK:
        steps += 1
        if step.fires:
            if latest is not None:
                walked += 1
            latest = step.slot
            if in_time(latest):
                if len(recent) == MAX_MISSED_RUNS and dropped is None:
                    dropped = recent[0]  # the oldest in-time slot that will not fire
                recent.append(latest)
                in_time_count += 1
        step = timetable.step(step.slot)
        excluded += step.excluded
    upcoming = step.slot
    if upcoming is not None and upcoming <= now:
        upcoming = timetable.next_after(now)  # a very long outage: skip ahead from now
    if latest is None:
        # Only a checkpoint fell due: nothing to fire, the walk goes on from the next one.
        moved = replace(meta, done=upcoming is None, excluded=meta.excluded + excluded)
        return FiringPlan(stored, [], 0, moved, upcoming)
    passed = walked + 1
    slots: list[tuple[float, str | None]]
    if entry.missed_policy == "All" and passed > 1:
        slots = [(slot, None) for slot in recent]
        if entry.max_runs is not None:
            slots = slots[: max(entry.max_runs - meta.count, 0)]
        if dropped is not None:
            reason = (
                f"missed: {in_time_count} slots passed within the starting deadline, more "
                f"than the {MAX_MISSED_RUNS} missedRunPolicy All fires; the oldest "
                f"{in_time_count - MAX_MISSED_RUNS} did not fire"
            )
            slots.insert(0, (dropped, reason))
        fired = sum(1 for _, why in slots if why is None)
        if not slots:  # every passed slot is past its deadline
            slots = [(latest, MISSED_REASON)]
    elif entry.missed_policy == "Skip" and in_time(latest) and now - latest > grace:
        slots, fired = [(latest, SKIP_REASON)], 0
    else:
        ok = in_time(latest)
        slots, fired = [(latest, None if ok else MISSED_REASON)], int(ok)
    missed = passed - fired
    new_meta = replace(
        meta,
        last=latest,
        done=upcoming is None,
        excluded=meta.excluded + excluded,
        missed=meta.missed + missed,
    )
    return FiringPlan(stored, slots, missed, new_meta, upcoming)


def settle(
    stored: StoredEntry, meta: Meta, due: float | None, sent: int, now: float
) -> tuple[Meta, float | None]:
    """The planned meta and next due time once it is known how many of the planned slots
    were sent: each counts toward ``maxRuns``, and reaching it (or running out of slots)
    completes the entry."""
    meta = replace(meta, count=meta.count + sent)
    if due is None or stored.entry.limit_reached(meta):
        return replace(meta, done=True, ended=meta.ended or now), None
    return meta, due


def claim_of(
    stored: StoredEntry,
    meta: Meta,
    due: float | None,
    record: RunWrite | None = None,
    pushes: Sequence[tuple[str, str]] = (),
    more: Sequence[tuple[RunWrite, Sequence[tuple[str, str]]]] = (),
) -> Claim:
    """The claim of ``stored``'s slot as read, leaving it with ``meta`` and due at ``due``
    (None: out of the due set), and writing ``record`` and ``pushes`` if it wins."""
    return Claim(
        stored.entry.name, stored.rev, stored.due_time(), meta.to_json(), due, record, pushes, more
    )


class _Prepared(NamedTuple):
    """A batch ready to claim (:meth:`ForwarderScheduler._prepare`): its plans, its planned
    slots (plan index, outcome, record, send), their captured messages, the claims, the
    message batch holding their task-sent events, the producer it was built on and the
    scope holding that producer, and the names of its entries."""

    plans: list[FiringPlan]
    rows: list[tuple[int, Outcome, RunWrite, Send | None]]
    pushes: list[Push | None]
    claims: list[Claim]
    built: MessageBatch | None
    producer: Any
    scope: contextlib.ExitStack
    names: frozenset[str]


def _no_result_subscription(producer: Any, task_id: str) -> None:
    """Stands in for the result backend's ``on_task_call`` in beat (see ``__init__``)."""


def plan_wait(renew_in: float, until_due: float | None) -> tuple[float, bool]:
    """How long the beat waits after a pass, and whether that wait must end on time.

    ``renew_in``: seconds until the lock must be renewed (a third into its lease) or the
    loop's longest sleep; ``until_due``: seconds until the next due time, None if nothing is
    due. Only a wait followed by a due time must end on time; one that ends to renew the lock
    with nothing due soon after may end ~0.1 s late (ScheduleStore.wait_for_change). A firing
    due within that overshoot of the renewal would be late by it: that wait is exact too.
    """
    if until_due is None:
        return renew_in, False
    if until_due <= renew_in:
        return until_due, True
    return renew_in, until_due <= renew_in + TIMEOUT_SLACK


class ForwarderScheduler(Scheduler):
    """Celery Beat scheduler on Forwarder's Redis store (see the module docstring)."""

    #: Injectable clock, so tests can run beat against a fixed or shifted time.
    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        core = require_core(app)
        self.settings = core.settings
        self.client = core.client
        self.waiter = core.waiter
        self.store = core.store
        self.runs = core.runs
        self.dispatcher = core.dispatcher
        self.metrics = core.metrics
        # Beat never waits for a result, so the Redis result backend's per-task pubsub
        # subscription (a SUBSCRIBE and an UNSUBSCRIBE round trip per firing, most of a
        # burst's cost) is skipped in this process. Results are still stored by workers.
        app.backend.on_task_call = _no_result_subscription
        self.lock_timeout = self.settings.beat_lock_timeout
        self.identity = f"{uuid.uuid4()}"
        self.lock = self.client.lock(
            core.keys.lock, timeout=self.lock_timeout, blocking=False, thread_local=False
        )
        self.holding = False
        self._last_renew = 0.0
        self._backoff = 0.0
        # Metric increments not yet written (see METRICS_FLUSH_WAIT).
        self._metrics: dict[str, int | float] = {}
        # Whether the last pass took a full batch (a burst is being drained).
        self._draining = False
        # A full batch prepared by the last pass, claimed by the next one (see _tick), and the
        # thread that claims it.
        self._pending: _Prepared | None = None
        # The batch after it, read ahead by the claim thread, and the time it was read at.
        self._ahead: tuple[list[StoredEntry], float] | None = None
        self._claim_thread: ThreadPoolExecutor | None = None
        kwargs.setdefault("max_interval", self.settings.beat_max_loop_interval)
        super().__init__(app, *args, **kwargs)
        # Everything loaded so far (Celery, kombu, redis, the app) lives as long as beat: move
        # it out of the cyclic GC's reach. Otherwise each generation-2 collection walks it all
        # and stops the beat ~40 ms, and firings due meanwhile go out that late (precision at
        # N = 100,000: the run's max lateness).
        gc.freeze()

    # Celery's Scheduler API ----------------------------------------------------------------

    def setup_schedule(self) -> None:
        if self.app.conf.beat_schedule:
            log.warning(
                "beat_schedule entries are ignored: declare schedules as ScheduledTask "
                "resources (or YAML files in local mode)"
            )

    @property
    def schedule(self) -> dict[str, Any]:
        # Celery only uses this for `beat -l debug` listings; entries live in Redis.
        return {}

    @property
    def info(self) -> str:
        return (
            f"    . redis -> {self.settings.redacted_redis_url}\n"
            f"    . lock -> {self.lock.name} ({self.lock_timeout}s)"
        )

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass: keep the lock, fire a batch of due entries, then wait for the next due
        time or a change. Returns how long Celery should sleep (0: we already waited)."""
        try:
            delay = self._tick()
            self._backoff = 0.0
            return delay
        except (redis.RedisError, OperationalError, BATCH_PUBLISH_ERROR) as exc:
            # Redis restarted or unreachable (kombu reports it as OperationalError while
            # publishing, or BatchPublishError when a publish pipeline fails): keep beat
            # alive and retry with backoff. Celery's beat loop does not catch exceptions
            # from tick(), so anything raised here would end the beat process.
            self._backoff = min(max(self._backoff * 2, 0.5), 10.0)
            # Still holding, unless the next pass fails to renew: it renews first (and stands
            # by if the lease is gone). Dropping `holding` here would make this beat wait out
            # its own lease after every Redis blip, with nothing firing meanwhile.
            self._last_renew = -math.inf
            log.warning("beat: Redis unavailable (%s); retrying in %.1fs", exc, self._backoff)
            return self._backoff

    def close(self) -> None:
        pending, self._pending, self._ahead = self._pending, None, None
        if pending is not None:
            # Prepared, never claimed: fire it now rather than leave it to the next holder.
            try:
                with contextlib.suppress(redis.RedisError, OperationalError, BATCH_PUBLISH_ERROR):
                    claimed, _ = self.store.claim(pending.claims)
                    self._finish(pending, claimed)
            finally:
                pending.scope.close()
        if self._claim_thread is not None:
            self._claim_thread.shutdown()
            self._claim_thread = None
        with contextlib.suppress(redis.RedisError):
            self._flush_metrics()
        if self.holding:
            try:
                self.lock.release()
                log.info("beat: released the lock")
            except redis.RedisError:
                log.warning(
                    "beat: could not release the lock; it expires in %ss", self.lock_timeout
                )
            self.holding = False
        super().close()

    # Internals ------------------------------------------------------------------------------

    def _hold_lock(self) -> bool:
        now = time.monotonic()
        if self.holding:
            if now - self._last_renew < self.lock_timeout / 3:
                return True
            try:
                self.lock.extend(self.lock_timeout, replace_ttl=True)
                self._last_renew = now
                return True
            except redis.exceptions.LockError:
                log.warning("beat: lost the lock; standing by")
                self.holding = False
        if self.lock.acquire(blocking=False):
            log.info("beat: acquired the lock; dispatching")
            self.holding, self._last_renew = True, now
            return True
        return False

    def _standby_wait(self) -> float:
        # Sleep until the holder's lease would run out, then try again: takeover within the
        # lock timeout of the holder's last renewal, and no polling faster than that.
        ttl_ms = int(self.client.pttl(self.lock.name))
        return float(
            max(0.05, min(ttl_ms / 1000 + 0.01 if ttl_ms > 0 else 0.05, self.max_interval))
        )

    def _claimer(self) -> ThreadPoolExecutor:
        """The thread that runs a drained batch's claim, and reads the next batch, while
        this one is prepared."""
        if self._claim_thread is None:
            self._claim_thread = ThreadPoolExecutor(1, thread_name_prefix="forwarder-claim")
            # That thread mostly waits for Redis while the main thread builds messages; a
            # reply that arrives waits for the GIL until the main thread yields it, after the
            # switch interval (5 ms by default): at ~50 ms a batch, a tenth of a burst's time
            # (N = 100,000: 11.0-11.8 s to all published, 9.8-10.4 s at 1 ms).
            sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL))
        return self._claim_thread

    def _due_batch(
        self, now: float | None, limit: int, exclude: frozenset[str]
    ) -> tuple[list[StoredEntry], float]:
        """Up to ``limit`` due entries of a backlog, picked fairly (ScheduleStore.due),
        leaving out those named in ``exclude``, and the time they were read at (``now``;
        None: the clock's time)."""
        if now is None:
            now = self.clock()
        window = self.settings.beat_batch_size * FAIR_WINDOW_BATCHES
        return self.store.due(now, limit, window=window, exclude=exclude), now

    def _take_metrics(self) -> list[tuple[str, int | float]]:
        pending, self._metrics = self._metrics, {}
        return list(pending.items())

    def _add_metrics(self, increments: list[tuple[str, int | float]]) -> None:
        for name, value in increments:
            self._metrics[name] = self._metrics.get(name, 0) + value

    def _flush_metrics(self) -> None:
        pending = self._take_metrics()
        if pending:
            with self.client.pipeline(transaction=False) as pipe:
                self.metrics.add(pipe, pending)
                pipe.execute()

    def _tick(self) -> float:
        """One pass, in three Redis round trips when a few entries are due: one Lua read (the
        due entries, loaded, the earliest due time, and the previous pass's metrics), one Lua
        claim (claims, run records, messages and the next due time) and one pipeline for the
        task-sent events.

        A backlog is drained a batch a pass, pipelined so that Redis and beat's thread work
        at the same time: a full batch prepared by one pass is claimed by the next, on the
        claim thread, which then reads the batch after (leaving out the entries being
        prepared), while this pass prepares the batch the last one read ahead. So Redis runs
        a claim and a read while beat builds a batch's messages, instead of each waiting for
        the other."""
        pending, self._pending = self._pending, None
        ahead, self._ahead = self._ahead, None
        prepared: _Prepared | None = None
        try:
            if not self._hold_lock():
                return self._standby_wait()  # a pending batch is dropped: still due, unclaimed
            size = self.settings.beat_batch_size
            next_due: float | None = None
            limit = size
            batch: list[StoredEntry] | None
            if ahead is not None:
                batch, now = ahead
                ahead = None
            else:
                now = self.clock()
                batch = None
                if pending is None:
                    # A lost reply may or may not have been applied: drop those metrics, never
                    # count twice.
                    batch, next_due = self.store.read_due(now, size, self._take_metrics())
                if batch is None:
                    # A backlog: drain it in fair batches, the first of them small
                    # (FIRST_BATCH).
                    limit = size if self._draining else min(size, FIRST_BATCH)
                    exclude = pending.names if pending is not None else frozenset()
                    batch = self._due_batch(now, limit, exclude)[0]
            self._draining = bool(batch) and len(batch) == limit
            if pending is not None:
                claimer = self._claimer()
                claim = claimer.submit(self.store.claim, pending.claims)
                # While this batch is prepared, the claim thread also reads the next one
                # (after the claim, leaving out this batch's entries, still due).
                names = frozenset(stored.entry.name for stored in batch)
                read = (
                    claimer.submit(self._due_batch, None, size, names) if self._draining else None
                )
                try:
                    if batch:
                        prepared = self._prepare(batch, now)
                finally:
                    claimed, next_due = claim.result()
                self._finish(pending, claimed)
                if read is not None:
                    ahead = read.result()
            elif batch:
                prepared = self._prepare(batch, now)
            if prepared is not None and self._draining and limit == size:
                # A full batch (not the small head, which goes out at once): claimed by the
                # next pass, while it prepares the batch after (read ahead, or read then).
                self._pending, self._ahead, prepared = prepared, ahead, None
                return 0.0  # more may be due: take the next batch straight away
            if prepared is not None:
                claimed, next_due = self.store.claim(prepared.claims)
                self._finish(prepared, claimed)
        finally:
            for unclaimed in (pending, prepared):
                if unclaimed is not None:
                    unclaimed.scope.close()
        renew_in = self.lock_timeout / 3 - (time.monotonic() - self._last_renew)
        wait, exact = plan_wait(
            min(renew_in, self.max_interval),
            None if next_due is None else next_due - self.clock(),
        )
        if wait > 0:
            if wait >= METRICS_FLUSH_WAIT:
                self._flush_metrics()
            self.store.wait_for_change(wait, self.waiter, exact=exact)
        return 0.0

    def fire_batch(self, batch: list[StoredEntry], now: float) -> float | None:
        """Claim and fire one batch of due entries; returns the earliest due time after it.

        Each won slot's run record and Celery message are written by the claim script itself
        (:meth:`ScheduleStore.claim`), so a slot this beat claimed is on its queue
        whenever this beat dies or Redis goes away after the claim. Entries with
        concurrencyPolicy Forbid or Replace are policed before the claim (their active runs
        read, the runs to replace revoked). A message that cannot be built ahead
        (:meth:`Dispatcher.capture` declines it) is published right after the claim."""
        prepared = self._prepare(batch, now)
        try:
            claimed, next_due = self.store.claim(prepared.claims)
            self._finish(prepared, claimed)
        finally:
            prepared.scope.close()
        return next_due

    def _prepare(self, batch: list[StoredEntry], now: float) -> _Prepared:
        """Everything of :meth:`fire_batch` before the claim: plan, police, record and build
        the messages of ``batch``; the producer that holds their events stays acquired
        until :meth:`_finish` (the caller closes ``scope``)."""
        plans: list[FiringPlan] = []
        deferred: list[Claim] = []
        for stored in batch:
            try:
                plans.append(plan_firing(stored, now, self.lock_timeout))
            except (ValueError, KeyError, TypeError, OverflowError) as exc:
                # An entry this beat cannot read (written by a newer version during a rolling
                # upgrade, say) must neither stop beat nor be retried on every tick.
                log.error(
                    "beat: cannot compute when %s fires (%s); retrying in %ss",
                    stored.entry.name,
                    exc,
                    BAD_ENTRY_RETRY,
                )
                deferred.append(claim_of(stored, stored.meta, now + BAD_ENTRY_RETRY))
        verdicts: dict[tuple[str, float], Outcome] = {}
        policed = [
            Firing(plan.stored.entry, slot)
            for plan in plans
            if plan.stored.entry.policy != "Allow"
            for slot, why in plan.slots
            if why is None
        ]
        if policed:
            checked, to_revoke = self.dispatcher.police(policed, now)
            # Revoked before the claim: should this beat die in between, the next holder
            # revokes them again (harmless) and fires the slot, which is still due; a claim
            # lost to a rewrite of the entry leaves the slot to the next pass the same way.
            self.dispatcher.revoke(to_revoke)
            verdicts = {(o.firing.entry.name, o.firing.slot): o for o in checked}
        # Per planned slot, in plan order: its plan, what becomes of it (sent, skipped by its
        # policy, or skipped as missed), its record and, where it is sent, its message's
        # (firing, run id, delay, expiry).
        rows: list[tuple[int, Outcome, RunWrite, Send | None]] = []
        # Run ids drawn for the whole batch at once (a uuid4 each, see uuid4_strings).
        run_ids = iter(uuid4_strings(sum(len(plan.slots) for plan in plans)))
        for index, plan in enumerate(plans):
            entry = plan.stored.entry
            for slot, why in plan.slots:
                firing = Firing(entry, slot)
                run_id = next(run_ids)
                outcome = verdicts.get((entry.name, slot)) or Outcome(firing, run_id, True)
                if why is not None:
                    outcome = Outcome(firing, outcome.run_id, False, why)
                    if not why.startswith((MISSED_REASON, SKIP_REASON)):
                        log.warning("beat: %s: %s", entry.name, why)
                if outcome.sent:
                    delay, expires = self.dispatcher.plan(firing, now)
                    record = self.runs.queued_write(
                        outcome.run_id,
                        entry.task,
                        source="schedule",
                        schedule=entry.name,
                        slot=slot,
                        args=entry.args,
                        kwargs=entry.kwargs,
                        expires=expires,
                    )
                    rows.append((index, outcome, record, (firing, outcome.run_id, delay, expires)))
                else:
                    record = self.runs.skipped_write(
                        outcome.run_id,
                        entry.task,
                        schedule=entry.name,
                        slot=slot,
                        reason=outcome.reason or "skipped",
                    )
                    rows.append((index, outcome, record, None))
        scope = contextlib.ExitStack()
        producer = scope.enter_context(self.app.producer_or_acquire())
        try:
            sends = [send for *_, send in rows if send is not None]
            captured, built = self.dispatcher.capture(producer, sends)
            in_order = iter(captured)
            pushes = [None if send is None else next(in_order) for *_, send in rows]
            per_plan: list[list[tuple[RunWrite, Sequence[tuple[str, str]]]]] = [[] for _ in plans]
            sent_count = [0] * len(plans)
            for (index, outcome, record, _send), push in zip(rows, pushes, strict=True):
                per_plan[index].append((record, push or ()))
                sent_count[index] += outcome.sent
            claims = []
            for plan, runs, count in zip(plans, per_plan, sent_count, strict=True):
                meta, due = settle(plan.stored, plan.meta, plan.due, count, now)
                if not runs:  # a checkpoint: the claim only moves the entry on
                    claims.append(claim_of(plan.stored, meta, due))
                    continue
                (first, first_push), *more = runs
                claims.append(claim_of(plan.stored, meta, due, first, first_push, more))
        except BaseException:
            scope.close()
            raise
        names = frozenset(plan.stored.entry.name for plan in plans)
        return _Prepared(plans, rows, pushes, [*claims, *deferred], built, producer, scope, names)

    def _finish(self, prepared: _Prepared, claimed: list[bool]) -> None:
        """Everything of :meth:`fire_batch` after the claim (``claimed``: won per claim):
        publish what the claim could not, flush the task-sent events, count and log."""
        plans, rows, pushes, built, producer = (
            prepared.plans,
            prepared.rows,
            prepared.pushes,
            prepared.built,
            prepared.producer,
        )
        won: list[Outcome] = []
        sent: list[tuple[Send, Push | None]] = []
        lost: set[str] = set()
        skipped = missed = excluded = 0
        for plan, claim_won in zip(plans, claimed, strict=False):
            if claim_won:
                missed += plan.missed  # slots walked past or out of time, not fired
                excluded += plan.meta.excluded - plan.stored.meta.excluded
        for (index, outcome, _record, send), push in zip(rows, pushes, strict=True):
            if not claimed[index]:  # rewritten or claimed by another beat meanwhile
                lost.add(outcome.run_id)
                continue
            won.append(outcome)
            if send is None:
                skipped += not (outcome.reason or "").startswith(MISSED)
            else:
                sent.append((send, push))
        if built is not None:
            built.drop_events(lost)
        lateness = self.dispatcher.complete(
            producer, sent, built, first_flush=FIRST_BATCH, clock=self.clock
        )
        self._add_metrics(
            SchedulerMetrics.increments(
                fired=lateness, skipped=skipped, missed=missed, excluded=excluded
            )
        )
        Dispatcher.log_outcomes(won)
