"""RunWatch against a real Redis: run records written by the core's RunLog wake its waiters
through one pattern subscription per process, which survives a Redis restart."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import redis
from forwarder_api.run_watch import RunWatch
from forwarder_worker import Core, Settings
from forwarder_worker._redis.keys import glob_escape
from forwarder_worker.runs.records import RunLog
from support.processes import eventually
from support.valkey_process import valkey

LONG = 30.0


def _watch(redis_url: str) -> tuple[RunWatch, RunLog]:
    """A watch as the api builds it: on a Core's asyncio client and run log."""
    core = Core.from_settings(Settings(redis_url=redis_url))
    return RunWatch(core.async_runs), core.runs


async def _close(watch: RunWatch, runs: RunLog) -> None:
    """The api's shutdown: the watch's subscription, then the clients."""
    await watch.aclose()
    await watch.client.aclose()
    runs.client.close()


def _pattern_subscribers(rclient: redis.Redis) -> int:
    """Connections holding a pattern subscription (the watch's shared one)."""
    return sum(1 for c in rclient.client_list() if int(c.get("psub", 0)) > 0)


async def _until(check: object, timeout: float = LONG) -> None:
    async def poll() -> None:
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


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
        await _until(lambda: watch.waiting >= 3)
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
        # Nobody waits any more; the one shared subscription stays, and no per-run one exists.
        assert watch.waiting == 0
        assert rclient.pubsub_numpat() == 1
        assert _pattern_subscribers(rclient) == 1
        assert rclient.pubsub_channels() == []
    finally:
        await _close(watch, runs)


async def test_a_run_that_ends_while_waiters_arrive_is_not_missed(redis_url: str) -> None:
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
        assert watch.waiting == 0
    finally:
        await _close(watch, runs)


async def test_many_concurrent_long_polls_share_one_subscription(
    redis_url: str, rclient: redis.Redis
) -> None:
    watch, runs = _watch(redis_url)
    ids = [f"many-{k}" for k in range(100)]
    for run_id in ids:
        runs.queued(run_id, "forwarder.ping", source="api")
    try:
        # Three waiters per run, 300 in all, on one pub/sub connection.
        waiters = [asyncio.create_task(watch.wait(run_id, LONG)) for run_id in ids * 3]
        await _until(lambda: watch.waiting == len(waiters))
        assert _pattern_subscribers(rclient) == 1
        # Half of the runs end (in one burst); only their waiters answer.
        with rclient.pipeline(transaction=False) as pipe:
            for run_id in ids[:50]:
                runs.transition(run_id, "SUCCESS", client=pipe)
            pipe.execute()
        ended = [w for k, w in enumerate(waiters) if k % 100 < 50]
        records = await asyncio.wait_for(asyncio.gather(*ended), LONG - 5)
        assert {r.state for r in records if r} == {"SUCCESS"}
        assert len(records) == 150
        await asyncio.sleep(0.2)
        assert not any(w.done() for k, w in enumerate(waiters) if k % 100 >= 50)
        assert watch.waiting == 150
        for run_id in ids[50:]:
            runs.transition(run_id, "REVOKED")
        rest = await asyncio.wait_for(asyncio.gather(*waiters), LONG - 5)
        assert sum(1 for r in rest if r and r.state == "REVOKED") == 150
        assert watch.waiting == 0
        assert _pattern_subscribers(rclient) == 1
    finally:
        await _close(watch, runs)


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
        await _close(watch, runs)


async def test_release_answers_every_waiter_as_its_run_is_and_later_waits_at_once(
    redis_url: str,
) -> None:
    # The server is stopping (SIGTERM): it waits for requests in flight, so the long polls
    # must end now, each with its run as it is, and a poll arriving after must not wait.
    watch, runs = _watch(redis_url)
    runs.queued("r1", "forwarder.ping", source="api")
    runs.queued("r2", "forwarder.ping", source="api")
    runs.transition("r2", "STARTED")
    try:
        waiters = [asyncio.create_task(watch.wait(run_id, LONG)) for run_id in ("r1", "r1", "r2")]
        await _until(lambda: watch.waiting == 3)
        began = time.monotonic()
        watch.release()
        records = await asyncio.wait_for(asyncio.gather(*waiters), LONG)
        assert [r.state for r in records if r] == ["PENDING", "PENDING", "STARTED"]
        assert watch.waiting == 0
        later = await asyncio.wait_for(watch.wait("r1", LONG), LONG)
        assert later is not None and later.state == "PENDING"
        assert time.monotonic() - began < LONG / 2
    finally:
        await _close(watch, runs)


async def test_a_run_that_ends_while_redis_restarts_is_answered_after_reconnecting(
    tmp_path: Path,
) -> None:
    # The announcement is made while the watch's connection is down, so only the
    # re-subscription (which wakes every waiter to read again) can answer before the wait ends.
    wait = 60.0
    with valkey(tmp_path / "redis", appendonly=True, appendfsync="always") as server:
        watch, runs = _watch(server.url)
        try:
            runs.queued("across", "forwarder.ping", source="api")
            waiter = asyncio.create_task(watch.wait("across", wait))
            await _until(lambda: watch.waiting == 1)
            # A waiter counts from before its first read; let that read finish (a read while
            # Redis is down fails the request, which is not what this test is about).
            await asyncio.sleep(1.0)
            assert not waiter.done()
            began = time.monotonic()
            await asyncio.to_thread(server.restart, downtime=1.0)

            def ended() -> bool:
                try:
                    runs.transition("across", "SUCCESS", result='"ok"')
                except redis.ConnectionError:
                    return False
                return True

            await asyncio.to_thread(eventually, ended, 20, message="run ended after restart")
            record = await asyncio.wait_for(waiter, wait)
            assert record is not None and record.state == "SUCCESS"
            assert time.monotonic() - began < wait - 20, "answered only when the wait ran out"
            # And the subscription works again for runs that end later.
            runs.queued("after", "forwarder.ping", source="api")
            later = asyncio.create_task(watch.wait("after", wait))
            await _until(lambda: watch.waiting == 1)
            began = time.monotonic()
            runs.transition("after", "FAILURE", error="x")
            record = await asyncio.wait_for(later, wait)
            assert record is not None and record.state == "FAILURE"
            assert time.monotonic() - began < wait - 20
        finally:
            await _close(watch, runs)


def test_the_pattern_matches_the_prefix_literally() -> None:
    assert glob_escape("forwarder:") == "forwarder:"
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
    # What the watch subscribes to: every run's channel under the prefix, and nothing else.
    core = Core.from_settings(Settings(key_prefix="a*b:"))
    assert RunWatch(core.async_runs).pattern == "a\\*b:run:*"
    core.close()


async def test_a_waiter_answers_with_the_announced_record_without_reading_it(
    redis_url: str, rclient: redis.Redis
) -> None:
    watch, runs = _watch(redis_url)
    runs.queued("ann1", "forwarder.ping", source="api")
    runs.queued("ann2", "forwarder.ping", source="api")
    try:
        # An announcement that differs from the hash (still PENDING) shows which one the
        # waiter answered with: the announced final record, with no read of its own.
        waiter = asyncio.create_task(watch.wait("ann1", LONG))
        await _until(lambda: watch.waiting == 1)
        announced = {"id": "ann1", "task": "forwarder.ping", "state": "SUCCESS", "result": "1"}
        rclient.publish("forwarder:run:ann1", json.dumps(announced))
        record = await asyncio.wait_for(waiter, LONG)
        assert record is not None and (record.state, record.result) == ("SUCCESS", "1")
        # An older writer's bare state: the waiter reads the record, and keeps waiting while
        # the run has not ended.
        waiter = asyncio.create_task(watch.wait("ann2", LONG))
        await _until(lambda: watch.waiting == 1)
        rclient.publish("forwarder:run:ann2", "SUCCESS")
        await asyncio.sleep(0.3)
        assert not waiter.done()
        rclient.hset("forwarder:run:ann2", "state", "FAILURE")
        rclient.publish("forwarder:run:ann2", "FAILURE")
        record = await asyncio.wait_for(waiter, LONG)
        assert record is not None and record.state == "FAILURE" and record.result is None
    finally:
        await _close(watch, runs)
