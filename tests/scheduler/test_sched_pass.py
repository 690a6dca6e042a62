"""The cost and shape of one beat pass: few Redis round trips per firing, claims that write
their run records and put their messages on the queues atomically (only where the claim
wins, so a beat dying after its claim loses no slot), a burst's head published in a small
first batch, and metrics that reach Redis although they ride along with later work.

Beat runs in this process here (``ForwarderScheduler.tick()``, real Redis, real Celery
publishing), so the test can count the scheduler's own socket writes: one write is one
round trip, a pipeline included.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.connection
from forwarder_worker import Core
from forwarder_worker._redis.scripts import Claim
from forwarder_worker.beat.scheduler import FIRST_BATCH, ForwarderScheduler, claim_of, plan_wait
from forwarder_worker.schedules.store import TIMEOUT_SLACK, Entry
from forwarder_worker.settings import Settings
from support.broker_messages import queued, raw_events
from support.crash import killed_at_next_publish

PREFIX = "forwarder:"
QUEUE = f"{PREFIX}default"


@pytest.fixture
def scheduler(redis_url: str) -> Iterator[ForwarderScheduler]:
    settings = Settings(redis_url=redis_url, beat_lock_timeout=120, beat_batch_size=500)
    core = Core.from_settings(settings)
    beat = ForwarderScheduler(core.app)
    yield beat
    beat.close()
    core.close()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A one-element counter of socket writes by any redis-py connection in this process."""
    count = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        count[0] += 1
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return count


def test_a_pass_firing_spread_entries_takes_three_round_trips(
    scheduler: ForwarderScheduler, rclient: redis.Redis, round_trips: list[int]
) -> None:
    store = scheduler.store
    n, gap = 20, 0.05  # closer than a blocking wait is worth: beat sleeps between firings
    start = time.time() + 1.0
    for i in range(n):
        store.upsert(
            Entry(name=f"spread/e{i}", task="forwarder.ping", schedule={"at": start + i * gap})
        )
    scheduler.tick()  # acquires the lock, then waits for the first slot
    per_firing_pass: list[int] = []
    deadline = time.time() + 30
    while rclient.llen(QUEUE) < n and time.time() < deadline:
        before_trips, before_len = round_trips[0], rclient.llen(QUEUE)
        scheduler.tick()
        after_len = rclient.llen(QUEUE)
        if after_len > before_len:
            per_firing_pass.append(round_trips[0] - before_trips - 2)  # minus our two LLENs
    assert rclient.llen(QUEUE) == n
    # Read (entries, next due and metrics in one Lua call), claim with run records (one Lua
    # call) and the publish pipeline. The old pass took nine.
    assert statistics.median(per_firing_pass) <= 3, per_firing_pass
    for i in range(n):
        (record,) = scheduler.runs.recent(schedule=f"spread/e{i}")
        assert record.state == "PENDING"


def test_a_claim_writes_its_run_record_only_where_it_wins(core: Core, rclient: redis.Redis) -> None:
    store, runs = core.store, core.runs
    now = time.time()
    store.upsert(Entry(name="ha/one", task="forwarder.ping", schedule={"every": 60}), now=now)
    store.upsert(Entry(name="ha/two", task="forwarder.ping", schedule={"every": 90}), now=now + 5)
    (stored,), first = store.read_due(now + 1, 10)
    assert stored.entry.name == "ha/one"
    assert first == pytest.approx(now)

    queue = f"{PREFIX}claimed"

    def claim(run_id: str) -> Claim:
        record = runs.queued_write(
            run_id, "forwarder.ping", source="schedule", schedule="ha/one", slot=now
        )
        return claim_of(stored, stored.meta, now + 60, record, [(queue, f"message of {run_id}")])

    won, next_due = store.claim([claim("first")])
    assert won == [True]
    assert next_due == pytest.approx(now + 5)  # ha/two is now the earliest
    # A second beat that read the same slot (a stale holder) loses, and leaves no record
    # and no message.
    lost, _ = store.claim([claim("second")])
    assert lost == [False]
    assert rclient.lrange(queue, 0, -1) == ["message of first"]
    first_run = runs.get("first")
    assert first_run is not None
    assert first_run.state == "PENDING"
    assert first_run.slot == pytest.approx(now)
    assert runs.get("second") is None
    assert [r.id for r in runs.recent(schedule="ha/one")] == ["first"]
    assert [run.id for run in runs.active(["ha/one"])["ha/one"]] == ["first"]


def test_a_burst_head_goes_out_in_a_small_first_batch(
    scheduler: ForwarderScheduler, rclient: redis.Redis
) -> None:
    store = scheduler.store
    due, n = time.time() - 1, 620
    for i in range(n):
        store.upsert(Entry(name=f"burst/e{i:03d}", task="forwarder.ping", schedule={"at": due}))
    sizes = []
    while rclient.llen(QUEUE) < n and len(sizes) < 10:
        before = rclient.llen(QUEUE)
        scheduler.tick()
        sizes.append(rclient.llen(QUEUE) - before)
    # A small head first, claimed in its own pass; then a full batch of beat_batch_size,
    # claimed by the next pass while that pass prepares the rest (which, not a full batch,
    # it claims straight after).
    assert sizes[:3] == [FIRST_BATCH, 0, n - FIRST_BATCH]
    assert rclient.zcard(f"{PREFIX}runs") == n
    assert rclient.zcard("forwarder::schedule") == 0


def test_a_backlog_is_drained_with_each_batch_read_ahead_and_fired_once(
    redis_url: str, rclient: redis.Redis
) -> None:
    # Batches of 100: after the small head, each full batch is claimed by the next pass on
    # the claim thread, which then reads the batch after it while that pass prepares its
    # own. Every entry fires exactly once: none is read twice or skipped.
    core = Core.from_settings(
        Settings(redis_url=redis_url, beat_lock_timeout=120, beat_batch_size=100)
    )
    beat = ForwarderScheduler(core.app)
    try:
        due, n = time.time() - 1, FIRST_BATCH + 4 * 100 + 30
        for i in range(n):
            core.store.upsert(
                Entry(name=f"drain/e{i:03d}", task="forwarder.ping", schedule={"at": due})
            )
        sizes = []
        while rclient.llen(QUEUE) < n and len(sizes) < 12:
            before = rclient.llen(QUEUE)
            beat.tick()
            sizes.append(rclient.llen(QUEUE) - before)
        assert sizes == [FIRST_BATCH, 0, 100, 100, 100, 130]
        names = [m["headers"]["forwarder_schedule"] for m in queued(rclient, PREFIX).values()]
        assert sorted(names) == [f"drain/e{i:03d}" for i in range(n)]
        assert rclient.zcard(f"{PREFIX}runs") == n
        assert rclient.zcard("forwarder::schedule") == 0
    finally:
        beat.close()
        core.close()


def test_metrics_reach_redis_before_beat_idles(
    scheduler: ForwarderScheduler, rclient: redis.Redis
) -> None:
    store = scheduler.store
    now = time.time()
    for i in range(3):
        store.upsert(
            Entry(name=f"m/e{i}", task="forwarder.ping", schedule={"every": 3600}), now=now
        )
    # One pass: fires all three, then waits (nothing due for an hour), so the deferred
    # metrics are written before it blocks. A short wait keeps the test quick.
    scheduler.max_interval = 0.5
    scheduler.tick()
    assert rclient.llen(QUEUE) == 3
    metrics = rclient.hgetall(f"{PREFIX}:metrics")
    assert int(metrics["fired"]) == 3
    assert int(metrics["lateness_count"]) == 3
    assert float(metrics["lateness_sum"]) >= 0


def test_messages_reach_queues_no_worker_has_declared(
    scheduler: ForwarderScheduler, rclient: redis.Redis
) -> None:
    # Beat declares each queue of a batch once (not per message); a queue that no worker
    # has consumed from yet must still get its messages, not have them dropped unrouted.
    store = scheduler.store
    due = time.time() - 1
    for i in range(6):
        queue = ("lonely-a", "lonely-b")[i % 2]
        store.upsert(
            Entry(name=f"q/e{i}", task="forwarder.ping", schedule={"at": due}, queue=queue)
        )
    for _ in range(5):
        scheduler.tick()
        if rclient.llen(f"{PREFIX}lonely-a") + rclient.llen(f"{PREFIX}lonely-b") == 6:
            break
    assert rclient.llen(f"{PREFIX}lonely-a") == 3
    assert rclient.llen(f"{PREFIX}lonely-b") == 3


def test_a_beat_killed_right_after_its_claim_loses_no_slot(
    scheduler: ForwarderScheduler, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, runs = scheduler.store, scheduler.runs
    due = time.time() - 1
    policies = {"died/allow": "Allow", "died/forbid": "Forbid", "died/replace": "Replace"}
    for name, policy in policies.items():
        store.upsert(Entry(name=name, task="forwarder.ping", schedule={"at": due}, policy=policy))

    # Beat dies at its first publish pipeline after the claim (kombu's flush to Redis), the
    # window where a slot used to be claimed and recorded but never sent.
    with killed_at_next_publish(monkeypatch):
        scheduler.tick()

    # Every slot is claimed (not due again, so no other beat fires it twice) and every run
    # recorded as queued is on the queue for a worker, with its own id.
    assert rclient.zcard("forwarder::schedule") == 0
    messages = queued(rclient, PREFIX)
    for name in policies:
        (record,) = runs.recent(schedule=name)
        assert record.state == "PENDING"
        assert messages[record.id]["headers"]["forwarder_schedule"] == name
    assert len(messages) == len(policies)


def test_a_lost_claim_sends_no_message_and_no_event(
    scheduler: ForwarderScheduler, rclient: redis.Redis
) -> None:
    store, runs = scheduler.store, scheduler.runs
    due = time.time() - 1
    for name in ("lost/kept", "lost/rewritten"):
        store.upsert(Entry(name=name, task="forwarder.ping", schedule={"at": due}))
    batch = store.due(time.time(), 10)
    # Rewritten after beat read it (an update from the operator): its claim must lose, and
    # the message and task-sent event built for it before the claim must go nowhere.
    store.upsert(
        Entry(name="lost/rewritten", task="forwarder.ping", schedule={"at": due}, args=[1])
    )
    with raw_events(rclient, PREFIX) as events:
        scheduler.fire_batch(batch, time.time())
    messages = queued(rclient, PREFIX)
    assert [m["headers"]["forwarder_schedule"] for m in messages.values()] == ["lost/kept"]
    assert [event["uuid"] for _, envelope in events for event in envelope["body"]] == list(messages)
    assert runs.recent(schedule="lost/rewritten") == []


@pytest.mark.parametrize(
    ("renew_in", "until_due", "planned"),
    [
        # A due time before the renewal: wait for it, and end on time.
        (1.0, 0.4, (0.4, True)),
        # Due just after the renewal, within how late a lax wait may end: a lax wait to the
        # renewal would make that firing late by up to ~0.1 s, so this wait is exact too.
        (1.0, 1.0 + TIMEOUT_SLACK / 2, (1.0, True)),
        # Due well after the renewal, or nothing due: the wait to renew may end a little late.
        (1.0, 1.0 + TIMEOUT_SLACK * 3, (1.0, False)),
        (1.0, None, (1.0, False)),
    ],
)
def test_only_a_wait_followed_soon_by_a_due_time_must_end_on_time(
    renew_in: float, until_due: float | None, planned: tuple[float, bool]
) -> None:
    assert plan_wait(renew_in, until_due) == planned
