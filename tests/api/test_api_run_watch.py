"""RunWatch against a real Redis: run records written by the core's RunLog wake its waiters,
and nothing stays subscribed once nobody waits."""

from __future__ import annotations

import asyncio
import time

import redis
from forwarder_api.run_watch import RunWatch
from forwarder_worker.connection import async_redis_client
from forwarder_worker.runs import RunLog
from forwarder_worker.settings import Settings

LONG = 30.0


def _watch(redis_url: str) -> tuple[RunWatch, RunLog]:
    settings = Settings(redis_url=redis_url)
    runs = RunLog(redis.Redis.from_url(redis_url, decode_responses=True), settings.key_prefix)
    return RunWatch(async_redis_client(settings), runs), runs


def _subscribers(rclient: redis.Redis, channel: str) -> int:
    return int(dict(rclient.pubsub_numsub(channel))[channel])


async def test_a_final_transition_wakes_every_waiter_of_the_run(
    redis_url: str, rclient: redis.Redis
) -> None:
    watch, runs = _watch(redis_url)
    runs.queued("r1", "forwarder.ping", source="api")
    runs.queued("r2", "forwarder.ping", source="api")
    try:
        began = time.monotonic()
        waiters = [asyncio.create_task(watch.wait(run_id, LONG)) for run_id in ("r1",) * 3]
        other = asyncio.create_task(watch.wait("r2", 0.5))
        channel = runs.key("r1")

        async def subscribed() -> None:
            while _subscribers(rclient, channel) < 1:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(subscribed(), LONG)
        runs.transition("r1", "STARTED")  # not final: nobody wakes
        await asyncio.sleep(0.2)
        assert not any(w.done() for w in waiters)
        runs.transition("r1", "SUCCESS", result='"ok"')
        records = await asyncio.wait_for(asyncio.gather(*waiters), LONG)
        assert [r.state for r in records if r] == ["SUCCESS"] * 3
        assert time.monotonic() - began < LONG - 5
        # A run that did not end is answered as it is when its wait runs out.
        late = await other
        assert late is not None and late.state == "PENDING"
        # Nobody waits any more: no subscription is left behind.
        assert _subscribers(rclient, channel) == 0
        assert _subscribers(rclient, runs.key("r2")) == 0
    finally:
        await watch.aclose()


async def test_a_run_that_ends_while_subscribing_is_not_missed(
    redis_url: str, rclient: redis.Redis
) -> None:
    watch, runs = _watch(redis_url)
    try:
        # Waiters come and go on the same runs while the runs end at random moments; each
        # must answer the final state well before its wait runs out.
        for round_ in range(30):
            run_id = f"race-{round_}"
            runs.queued(run_id, "forwarder.ping", source="api")
            waiters = [asyncio.create_task(watch.wait(run_id, LONG)) for _ in range(3)]
            await asyncio.sleep(0.001 * (round_ % 5))
            runs.transition(run_id, "FAILURE", error="x")
            records = await asyncio.wait_for(asyncio.gather(*waiters), LONG - 5)
            assert {r.state for r in records if r} == {"FAILURE"}
            assert _subscribers(rclient, runs.key(run_id)) == 0
    finally:
        await watch.aclose()


async def test_unknown_and_finished_runs_answer_without_waiting(redis_url: str) -> None:
    watch, runs = _watch(redis_url)
    runs.queued("done", "forwarder.ping", source="api")
    runs.transition("done", "SUCCESS")
    try:
        began = time.monotonic()
        assert await watch.wait("never", LONG) is None
        done = await watch.wait("done", LONG)
        assert done is not None and done.state == "SUCCESS"
        assert time.monotonic() - began < LONG - 5
    finally:
        await watch.aclose()
