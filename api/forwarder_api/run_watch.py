"""Reading run records on the event loop, and waiting for a run to end (``?wait=``).

``GET /runs/{id}`` reads the run's hash with the asyncio Redis client, so a poll costs no
threadpool hop. With ``wait`` it holds the request until the run reaches a final state or the
wait runs out, like Celery's ``AsyncResult.get(timeout=...)`` without the exception. No sleep
loop: the run record's script publishes the final state on the run's channel (its hash key,
see :mod:`forwarder_worker.runs`), and one pub/sub connection per process, shared by every
waiter, is subscribed to the channels of the runs being waited for while they are.

The order that makes it race-free: subscribe and wait for Redis to confirm the subscription;
then read the record (it may have ended before anyone listened: answered at once); then
wait for the announcement. A lost announcement (the pub/sub connection
dropped) only means the waiter answers when its wait runs out, with the state at that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from forwarder_worker.runs import RunLog, RunRecord

log = logging.getLogger("forwarder.api")

# How long the reader waits on the socket before looking again (it only matters at shutdown).
READ_INTERVAL = 1.0


@dataclass
class _Channel:
    """Waiters of one run, and the subscriptions Redis has not confirmed yet."""

    waiters: set[asyncio.Future[None]] = field(default_factory=set)
    unconfirmed: int = 0
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)


class RunWatch:
    """Run records read on the event loop, and waits for runs to end."""

    def __init__(self, client: redis.asyncio.Redis, runs: RunLog) -> None:
        self.client = client
        self.runs = runs
        self._channels: dict[str, _Channel] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def get(self, run_id: str) -> RunRecord | None:
        """Run ``run_id``, or None if it was never recorded (or has expired)."""
        data = await self.client.hgetall(self.runs.key(run_id))
        return RunRecord.from_hash(data) if data else None

    async def wait(self, run_id: str, seconds: float) -> RunRecord | None:
        """Run ``run_id`` as soon as it has ended, or as it is after ``seconds``."""
        if seconds <= 0:
            return await self.get(run_id)
        # Listening first, then reading: a run waited for is usually still going (the
        # client has just submitted it), so this saves a read over read-listen-read.
        channel = self.runs.key(run_id)
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(seconds):
                state = await self._join(channel, ended)
                await state.confirmed.wait()
                record = await self.get(run_id)
                if record is None or record.final:
                    return record
                await ended
        except TimeoutError:
            pass
        finally:
            # Shielded: a cancelled request must still give up its subscription.
            await asyncio.shield(self._leave(channel, ended))
        return await self.get(run_id)

    async def aclose(self) -> None:
        """Stop listening and close the connections (the app's shutdown)."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None
        await self.client.aclose()

    # -- the shared subscription ----------------------------------------------------------

    async def _listening(self) -> Any:
        """The shared pub/sub connection, with its reader running (started on first use,
        and again if the reader ever died)."""
        if self._reader is not None and not self._reader.done():
            return self._pubsub
        if self._pubsub is not None:
            await self._pubsub.aclose()
        pubsub = self.client.pubsub()
        # Always subscribed to one channel of its own: redis-py checks the health of an
        # unsubscribed connection by reading a PING reply, which would race the reader; a
        # subscribed one only sends PINGs, and the reader gets the replies.
        await pubsub.subscribe(f"{self.runs.prefix}api:run-watch")
        self._pubsub = pubsub
        self._reader = asyncio.create_task(self._read(pubsub), name="run-watch")
        return pubsub

    async def _join(self, channel: str, ended: asyncio.Future[None]) -> _Channel:
        # Subscribes and unsubscribes are sent one at a time, in the order of the bookkeeping,
        # so an UNSUBSCRIBE of a run's last waiter cannot overtake the next waiter's SUBSCRIBE.
        async with self._lock:
            pubsub = await self._listening()
            state = self._channels.setdefault(channel, _Channel())
            state.waiters.add(ended)
            if len(state.waiters) == 1:
                state.confirmed.clear()
                state.unconfirmed += 1
                await pubsub.subscribe(channel)
            return state

    async def _leave(self, channel: str, ended: asyncio.Future[None]) -> None:
        async with self._lock:
            state = self._channels.get(channel)
            if state is None or ended not in state.waiters:
                return
            state.waiters.discard(ended)
            if state.waiters:
                return
            if not state.unconfirmed:
                del self._channels[channel]
            try:
                await self._pubsub.unsubscribe(channel)
            except redis.RedisError as exc:
                # Redis is gone. A reconnect may resubscribe; an unwatched run's message is
                # ignored, so nothing is left waiting on this.
                log.warning("run watch: could not unsubscribe from %s: %s", channel, exc)

    async def _read(self, pubsub: Any) -> None:
        while True:
            try:
                message = await pubsub.get_message(timeout=READ_INTERVAL)
            except (redis.RedisError, OSError) as exc:
                # redis-py reconnects and resubscribes on the next read; waiters meanwhile
                # answer when their wait runs out.
                log.warning("run watch: pub/sub connection lost: %s", exc)
                await asyncio.sleep(READ_INTERVAL)
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = str(message.get("channel"))
        state = self._channels.get(channel)
        if state is None:
            return
        if message["type"] == "subscribe":
            # A resubscription after a reconnect confirms too: never count below zero.
            state.unconfirmed = max(0, state.unconfirmed - 1)
            if not state.unconfirmed:
                state.confirmed.set()
                if not state.waiters:
                    del self._channels[channel]
        elif message["type"] == "message":
            for ended in state.waiters:
                if not ended.done():
                    ended.set_result(None)
