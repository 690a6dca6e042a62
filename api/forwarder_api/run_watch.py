"""Reading run records on the event loop, and waiting for a run to end (``?wait=``).

``GET /runs/{id}`` reads the run's hash with the asyncio Redis client, so a poll costs no
threadpool hop. With ``wait`` it holds the request until the run reaches a final state or the
wait runs out, like Celery's ``AsyncResult.get(timeout=...)`` without the exception. No sleep
loop: the run record's script publishes the final state on the run's channel (its hash key,
see :mod:`forwarder_worker.runs.records`).

One subscription per process serves every waiter: a single pub/sub connection holds a
pattern subscription to every run's channel (``<prefix>run:*``), made once, and a reader task
hands each announcement to the futures waiting for that run. A long poll then costs no
SUBSCRIBE, confirmation or UNSUBSCRIBE of its own: it registers a future, reads the record
(the run may have ended before anyone waited: answered at once), and waits. The announcement
carries the final record (see :mod:`forwarder_worker.runs.records`), which the waiter answers with
(parsed once per announced run, and only for runs someone waits for); an announcement
without one (an older worker's) makes the waiter read the record. The price is that every
API process hears every run that ends, waited for or not: a dictionary lookup per run (and
the announcement's bytes), far less than a subscribe/unsubscribe pair per long poll.

When the server is asked to stop, :meth:`RunWatch.release` answers every long poll with its
run as it is, and answers new ones at once (see :mod:`forwarder_api.stopping`): a long poll
may end before its run does, and the client asks again, of another replica.

Race-freedom: a waiter starts only once the pattern subscription is confirmed, and registers
before its first read, so an end announced after that read reaches it. If the pub/sub
connection drops, announcements made meanwhile are lost: when redis-py has reconnected and
re-subscribed (the confirmation arrives again), every waiter is woken to read its run again,
so a run that ended while the connection was down is still answered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis
import redis.asyncio
from forwarder_worker.runs.records import AsyncRunLog, RunRecord, announced_record

log = logging.getLogger("forwarder.api")

# How long the reader waits on the socket before looking again (it only matters at shutdown).
READ_INTERVAL = 1.0


class RunWatch:
    """Run records read on the event loop, and waits for runs to end."""

    def __init__(self, runs: AsyncRunLog) -> None:
        self.client = runs.client
        self.runs = runs
        self.pattern = runs.channels
        # Futures of the waiters, by run channel; a future is resolved when its run may have
        # ended (announced, or announcements may have been lost), with the announced final
        # record if there was one (else None: read it), and then replaced.
        self._waiters: dict[str, set[asyncio.Future[RunRecord | None]]] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._starting = asyncio.Lock()
        self._released = False

    async def get(self, run_id: str) -> RunRecord | None:
        """Run ``run_id``, or None if it was never recorded (or has expired)."""
        return await self.runs.get(run_id)

    async def wait(self, run_id: str, seconds: float) -> RunRecord | None:
        """Run ``run_id`` as soon as it has ended, or as it is after ``seconds``."""
        if seconds <= 0 or self._released:
            return await self.get(run_id)
        channel = self.runs.key(run_id)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                await self._listening()
                while not self._released:
                    woken: asyncio.Future[RunRecord | None] = loop.create_future()
                    waiters = self._waiters.setdefault(channel, set())
                    waiters.add(woken)
                    try:
                        record = await self.get(run_id)
                        if record is None or record.final:
                            return record
                        announced = await woken
                        if announced is not None and announced.final:
                            return announced
                    finally:
                        waiters.discard(woken)
                        if not waiters and self._waiters.get(channel) is waiters:
                            del self._waiters[channel]
        except TimeoutError:
            pass
        return await self.get(run_id)

    def release(self) -> None:
        """Answer every waiting long poll now, and every later one at once (the server is
        stopping, and would otherwise wait for them)."""
        self._released = True
        for waiters in self._waiters.values():
            self._wake(waiters)

    @property
    def waiting(self) -> int:
        """How many long polls are waiting right now."""
        return sum(len(w) for w in self._waiters.values())

    async def aclose(self) -> None:
        """Stop listening and close the subscription (the app's shutdown; the client is the
        Core's, which closes it)."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None

    # -- the shared subscription ----------------------------------------------------------

    async def _listening(self) -> None:
        """Return once the shared pattern subscription is confirmed (made on first use, and
        again if the reader ever died)."""
        if self._reader is None or self._reader.done():
            async with self._starting:
                if self._reader is None or self._reader.done():
                    self._subscribed.clear()
                    if self._pubsub is not None:
                        await self._pubsub.aclose()
                    pubsub = self.client.pubsub()
                    await pubsub.psubscribe(self.pattern)
                    self._pubsub = pubsub
                    self._reader = asyncio.create_task(self._read(pubsub), name="run-watch")
        await self._subscribed.wait()

    async def _read(self, pubsub: Any) -> None:
        while True:
            try:
                message = await pubsub.get_message(timeout=READ_INTERVAL)
            except (redis.RedisError, OSError) as exc:
                # The next read reconnects and re-subscribes (redis-py does); the
                # confirmation then wakes every waiter to look again.
                self._subscribed.clear()
                log.warning("run watch: pub/sub connection lost: %s", exc)
                await asyncio.sleep(READ_INTERVAL)
                continue
            if message is None:
                continue
            kind = message["type"]
            if kind == "pmessage":
                waiters = self._waiters.get(message["channel"])
                if waiters:
                    self._wake(waiters, announced_record(message["data"]))
            elif kind == "psubscribe":
                # Subscribed, first or again: whatever ended while we were not listening
                # was not heard, so every waiter reads its run again.
                self._subscribed.set()
                for waiters in self._waiters.values():
                    self._wake(waiters)

    @staticmethod
    def _wake(waiters: Any, record: RunRecord | None = None) -> None:
        for woken in waiters:
            if not woken.done():
                woken.set_result(record)
