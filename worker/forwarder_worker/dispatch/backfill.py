"""Backfill: every slot of a past window ``[start, end)`` of a schedule runs once, as a run of
source ``backfill`` whose ``scheduled_at`` is the slot.

One implementation for every door (the api's ``POST .../backfill``, the operator's
``forwarder.dev/backfill`` annotation, ``forwarder backfill``): :func:`parse_window` reads the
window, :func:`window_slots` checks it and lists its slots with the schedule's own timetable
(``next_after``, as beat does), and :class:`Backfiller` fires them through the dispatcher's
parts, as beat's pass does: the overlap policy (:meth:`Dispatcher.police`), the messages
built ahead (:meth:`Dispatcher.capture`), then one atomic claim in Redis that marks each slot
still free as backfilled, writes its run record and puts its message on its queue.

The idempotency rule: a slot runs at most once by backfill, and never when a run was already
sent for it (beat's, or an earlier backfill's, whatever became of the run): a slot beat
skipped (missed after an outage, or ``Forbid``) is free. Slots at or after the entry's next
due time are beat's (it has not passed them) and are left to it. What Redis remembers is
bounded: the backfilled slots of a schedule for ``result_expires`` (the run records' life) and
at most :data:`~forwarder_worker.names.BACKFILL_MEMORY_SLOTS`, so a window that starts
earlier than ``result_expires`` ago is refused.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from forwarder_worker._redis.scripts import BackfillSlot
from forwarder_worker.dispatch.dispatcher import BACKFILL, Dispatcher, Firing, Outcome, Send
from forwarder_worker.names import BACKFILL_MAX_SLOTS, BACKFILL_MEMORY_SLOTS
from forwarder_worker.schedules.store import ScheduleStore, StoredEntry

log = logging.getLogger(__name__)

# RFC 3339's date-time: a date, a time with optional fraction, and a zone (Z or an offset).
# A time without a zone is refused: a window read in the server's zone would be a guess.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
# Runs created this long before the window's start are read too: a slot's run is created at
# or after its slot, by a clock that may be this far behind Redis's writers.
_CLOCK_SKEW = 60.0
# [start, end) includes start: slots are looked for strictly after a hair before it.
_BEFORE = 1e-6

# The claim's answer per slot (see forwarder_worker._redis.scripts.BACKFILL_CLAIM).
_CLAIMED, _DONE, _BEATS = 0, 1, 2


class BackfillRefused(ValueError):
    """A backfill that cannot be done as asked; the message says why, for the asker."""


@dataclass(frozen=True)
class Window:
    """A past window ``[start, end)``, in epoch seconds."""

    start: float
    end: float

    def __str__(self) -> str:
        return f"{format_instant(self.start)}/{format_instant(self.end)}"


def format_instant(ts: float) -> str:
    """``ts`` as RFC 3339 in UTC with a ``Z`` (microseconds only when it has them)."""
    moment = datetime.fromtimestamp(ts, UTC)
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def parse_instant(text: str, what: str) -> float:
    """An RFC 3339 instant with a zone (``2026-12-06T10:00:00Z``, ``...+02:00``) as epoch
    seconds; BackfillRefused names ``what`` when it is not one."""
    text = text.strip()
    if not _RFC3339.match(text):
        raise BackfillRefused(
            f"{what} {text!r} is not an RFC 3339 time with a zone (e.g. 2026-12-06T10:00:00Z)"
        )
    try:
        # Python reads at most microseconds: a longer fraction is cut, not refused.
        head, _, rest = text.partition(".")
        if rest:
            digits = len(rest) - len(rest.lstrip("0123456789"))
            text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
        ts = datetime.fromisoformat(text.replace("z", "Z")).timestamp()
        # In UTC too it must be a date Python can write back (years 1 to 9999).
        datetime.fromtimestamp(ts, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise BackfillRefused(f"{what} {text!r} is not a valid time: {exc}") from None
    return ts


def parse_window(text: str) -> Window:
    """The window of a backfill annotation, ``"<start>/<end>"``."""
    start, slash, end = text.strip().partition("/")
    if not slash or "/" in end:
        raise BackfillRefused(
            f"{text!r} is not a window '<start>/<end>' of two RFC 3339 times "
            "(e.g. 2026-12-06T10:00:00Z/2026-12-06T11:00:00Z)"
        )
    return Window(parse_instant(start, "start"), parse_instant(end, "end"))


def window_slots(stored: StoredEntry, window: Window, now: float, horizon: float) -> list[float]:
    """The slots of ``stored``'s schedule in ``window``, oldest first; BackfillRefused when
    the window is empty, reaches past ``now``, starts more than ``horizon`` seconds ago, or
    holds more than :data:`BACKFILL_MAX_SLOTS`, or when the schedule is a one-off."""
    entry = stored.entry
    if "at" in entry.schedule:
        raise BackfillRefused(
            f"{entry.name} is a one-off (schedule.at): it has no window of slots to backfill; "
            "run it again with a trigger (forwarder.dev/run-now)"
        )
    if window.end <= window.start:
        raise BackfillRefused(f"the window {window} is empty: its end must be after its start")
    if window.end > now:
        raise BackfillRefused(
            f"the window {window} ends in the future (now is {format_instant(now)}): only past "
            "slots are backfilled, the schedule fires the coming ones"
        )
    if window.start < now - horizon:
        raise BackfillRefused(
            f"the window {window} starts before {format_instant(now - horizon)}: run records "
            f"are kept {int(horizon)}s (result_expires), so which of its slots ran could no "
            "longer be told"
        )
    anchor = stored.meta.anchor
    if "every" in entry.schedule and window.start < anchor:
        # The interval's grid extended back before its first firing, on the same phase.
        every = float(entry.schedule["every"])
        anchor -= math.ceil((anchor - window.start) / every) * every
    timetable = entry.timetable(anchor)
    slots: list[float] = []
    at = window.start - _BEFORE
    while (step := timetable.step(at)).slot is not None and step.slot < window.end:
        slot, at = step.slot, step.slot
        if not step.fires:
            continue  # a checkpoint in a long exclusion: an excluded slot, not one to run
        if len(slots) == BACKFILL_MAX_SLOTS:
            raise BackfillRefused(
                f"the window {window} holds more than {BACKFILL_MAX_SLOTS} slots of "
                f"{entry.name} (the cap): backfill it in shorter windows"
            )
        slots.append(slot)
    return slots


@dataclass(frozen=True)
class Backfilled:
    """What a backfill did with each slot of its window."""

    name: str
    window: Window
    slots: list[float]
    sent: list[Outcome] = field(default_factory=list)
    done: list[float] = field(default_factory=list)  # backfilled or run before
    beats: list[float] = field(default_factory=list)  # not passed by beat yet: left to it
    skipped: list[Outcome] = field(default_factory=list)  # refused by concurrencyPolicy

    def summary(self) -> str:
        """One line: the window and what became of its slots."""
        parts = [f"{len(self.sent)} sent", f"{len(self.done)} already run"]
        if self.beats:
            parts.append(f"{len(self.beats)} left to the schedule (not due yet)")
        if self.skipped:
            reason = self.skipped[0].reason or "skipped"
            parts.append(f"{len(self.skipped)} skipped ({reason})")
        return f"backfill {self.window}: {len(self.slots)} slots, {', '.join(parts)}"


class Backfiller:
    """Backfills windows of the schedules in one store, through one dispatcher."""

    def __init__(self, store: ScheduleStore, dispatcher: Dispatcher, *, horizon: float) -> None:
        self.store = store
        self.dispatcher = dispatcher
        # How far back a window may start: the life of the run records (result_expires).
        self.horizon = horizon

    def slots(self, name: str, window: Window) -> list[float]:
        """The slots of entry ``name`` a backfill of ``window`` would consider (checks only:
        BackfillRefused as :func:`window_slots`, LookupError without an entry)."""
        return window_slots(self._stored(name), window, time.time(), self.horizon)

    def _stored(self, name: str) -> StoredEntry:
        stored = self.store.get(name)
        if stored is None:
            raise LookupError(f"schedule {name} has no entry (is its spec valid and applied?)")
        return stored

    def run(self, name: str, window: Window) -> Backfilled:
        """Run every free slot of ``window`` of entry ``name`` once (see the module
        docstring); BackfillRefused for a window it refuses, LookupError without an entry."""
        now = time.time()
        stored = self._stored(name)
        slots = window_slots(stored, window, now, self.horizon)
        since = window.start - _CLOCK_SKEW
        codes = self.store.backfill_check(name, slots, since) if slots else []
        if codes is None:
            raise LookupError(f"schedule {name} has no entry (deleted meanwhile)")
        free = [slot for slot, code in zip(slots, codes, strict=True) if code == _CLAIMED]
        done = [slot for slot, code in zip(slots, codes, strict=True) if code == _DONE]
        beats = [slot for slot, code in zip(slots, codes, strict=True) if code == _BEATS]
        dispatcher = self.dispatcher
        outcomes, to_revoke = dispatcher.police(
            [Firing(stored.entry, slot, BACKFILL) for slot in free], now
        )
        dispatcher.revoke(to_revoke)
        skipped = [outcome for outcome in outcomes if not outcome.sent]
        sends: list[Send] = []
        for outcome in outcomes:
            if outcome.sent:
                delay, expires = dispatcher.plan(outcome.firing, now)
                sends.append((outcome.firing, outcome.run_id, delay, expires))
        sent: list[Outcome] = []
        with dispatcher.app.producer_or_acquire() as producer:
            captured, built = dispatcher.capture(producer, sends)
            items = [
                BackfillSlot(
                    firing.slot,
                    dispatcher.runs.queued_write(
                        run_id,
                        firing.entry.task,
                        source=BACKFILL,
                        schedule=name,
                        slot=firing.slot,
                        args=firing.args,
                        kwargs=firing.kwargs,
                        expires=expires,
                    ),
                    push or (),
                )
                for (firing, run_id, _delay, expires), push in zip(sends, captured, strict=True)
            ]
            claimed = (
                self.store.backfill_claim(
                    name,
                    items,
                    since=since,
                    keep_after=now - self.horizon,
                    keep=BACKFILL_MEMORY_SLOTS,
                )
                if items
                else []
            )
            if claimed is None:
                raise LookupError(f"schedule {name} has no entry (deleted meanwhile)")
            won, lost = [], set()
            for send, push, code in zip(sends, captured, claimed, strict=True):
                if code == _CLAIMED:
                    won.append((send, push))
                    sent.append(Outcome(send[0], send[1], True))
                else:  # another backfill took it meanwhile, or beat reached it
                    lost.add(send[1])
                    (done if code == _DONE else beats).append(send[0].slot)
            if built is not None:
                built.drop_events(lost)
            dispatcher.complete(producer, won, built)
        dispatcher.count([], skipped=len(skipped))
        Dispatcher.log_outcomes([*sent, *skipped])
        return Backfilled(name, window, slots, sent, sorted(done), sorted(beats), skipped)
