"""A real beat process against a real Redis: arming, suspend and resume, one-offs, downtime,
jitter and metrics, each checked through the run records and messages beat leaves behind.

No worker runs here: beat records each firing as it publishes it (PENDING), and the messages
stay in the queue, where their headers and ETAs can be read.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import replace
from datetime import datetime

from forwarder_worker import Core
from forwarder_worker.beat.scheduler import ForwarderScheduler
from forwarder_worker.names import HEADER_SCHEDULE, HEADER_SLOT, HEADER_UID
from forwarder_worker.schedules.store import UpsertResult
from forwarder_worker.settings import Settings
from support.processes import eventually
from support.scheduler_harness import PREFIX, Harness


def test_new_and_changed_entries_arm_at_once_without_polling(harness: Harness) -> None:
    # A 300 s loop interval and a lock renewed only every 300 s: without the wake key a new
    # entry would wait minutes for beat's next look.
    beat = harness.beat(beat_max_loop_interval=300, beat_lock_timeout=900)
    harness.wait_ready(beat)
    time.sleep(0.5)
    harness.client.config_resetstat()
    time.sleep(3)
    idle = harness.commands()
    assert idle <= 10, f"an idle beat ran {idle} Redis commands in 3 s: it is polling"

    written = time.time()
    harness.add("arm/new", {"every": 3600})
    (first,) = eventually(lambda: harness.fired("arm/new"), 20, message="new entry fired")
    assert first.slot is not None
    assert first.slot >= written  # due now, fired at once: not on a 300 s tick
    assert first.created is not None
    print(f"store write -> published: {first.created - written:.3f} s")

    # Changing the timing re-arms it in place: the next slot follows the new rhythm.
    harness.add("arm/new", {"every": 2})
    second = eventually(lambda: harness.fired("arm/new")[1:], 20, message="re-armed entry fired")
    assert second[0].slot == first.slot + 2

    # A one-off due in 1.5 s fires at its time, although beat was blocked when it was written.
    at = time.time() + 1.5
    harness.add("arm/later", {"at": at})
    (later,) = eventually(lambda: harness.fired("arm/later"), 20, message="one-off fired")
    assert later.slot == at
    assert later.created is not None
    assert later.created >= at
    assert "beat: acquired the lock" in beat.output()


def test_suspend_leaves_due_set_and_resume_fires_no_burst(harness: Harness) -> None:
    beat = harness.beat(beat_lock_timeout=30)
    harness.wait_ready(beat)
    entry = harness.add("pause/tick", {"every": 1}, generation=1)
    eventually(lambda: len(harness.fired("pause/tick")) >= 2, 20, message="two firings")

    # Suspended and resumed as the operator does: a new generation of the spec each time.
    harness.store.upsert(replace(entry, suspend=True, generation=2))
    assert harness.client.zscore("forwarder::schedule", "forwarder:pause/tick") is None
    stored = harness.store.get("pause/tick")
    assert stored is not None
    assert stored.entry.suspend
    assert stored.due is None
    time.sleep(0.5)  # a firing claimed before the suspend may still be recorded
    count = len(harness.fired("pause/tick"))
    suspended_at = time.time()
    harness.client.config_resetstat()
    time.sleep(3.5)
    assert len(harness.fired("pause/tick")) == count, "a suspended entry fired"
    # Beat never even reads a suspended entry (redbeat re-reads disabled ones every tick).
    assert "cmdstat_hmget" not in harness.client.info("commandstats")

    resumed_at = time.time()
    _, due = harness.store.upsert(replace(entry, generation=3))
    assert due is not None
    assert due > resumed_at  # re-armed from now, on the entry's own rhythm
    eventually(lambda: len(harness.fired("pause/tick")) >= count + 2, 20, message="resumed")
    time.sleep(0.5)
    after = [r.slot for r in harness.fired("pause/tick")[count:] if r.slot is not None]
    # None of the ~4 slots missed while suspended fired: every slot after is from now on,
    # one second apart, each once.
    assert all(slot > resumed_at for slot in after), (suspended_at, resumed_at, after)
    assert after == sorted(set(after))
    assert all(b - a >= 1 for a, b in itertools.pairwise(after))


def test_one_off_fires_once_then_completes(harness: Harness) -> None:
    beat = harness.beat()
    harness.wait_ready(beat)
    at = time.time() + 1
    entry = harness.add("once/at", {"at": at})
    (run,) = eventually(lambda: harness.fired("once/at"), 20, message="one-off fired")
    assert run.slot == at

    stored = eventually(
        lambda: (s := harness.store.get("once/at")) and s.meta.done and s, 5, message="done"
    )
    assert stored.due is None
    assert stored.meta.count == 1
    assert harness.client.zscore("forwarder::schedule", "forwarder:once/at") is None
    # Re-applying the same resource does not re-arm it; a new generation does not either.
    assert harness.store.upsert(entry)[1] is None
    result, due = harness.store.upsert(replace(entry, generation=1, kwargs={"changed": True}))
    assert (result, due) == (UpsertResult.UPDATED, None)
    time.sleep(2)
    assert len(harness.fired("once/at")) == 1


def test_missed_slots_after_downtime_fire_once_within_the_deadline(harness: Harness) -> None:
    beat = harness.beat("beat-1")
    harness.wait_ready(beat)
    harness.add("down/every", {"every": 1})
    at = time.time() + 3  # falls due while beat is down
    harness.add("down/late", {"at": at}, deadline=1)
    harness.add("down/in-time", {"at": at}, deadline=60)
    eventually(lambda: len(harness.fired("down/every")) >= 2, 20, message="firing")

    beat.stop()
    before = [r.slot for r in harness.fired("down/every")]
    fired_before = harness.metric("fired")
    time.sleep(5)  # ~5 slots of down/every missed; `at` passes and 1 s more
    restarted = time.time()
    beat = harness.beat("beat-2")
    harness.wait_ready(beat)
    eventually(lambda: len(harness.fired("down/every")) >= len(before) + 3, 20, message="again")

    runs = harness.fired("down/every")
    slots = [r.slot for r in runs if r.slot is not None]
    assert len(slots) == len(runs) == len(set(slots)), "a slot fired twice"
    after = slots[len(before) :]
    # The ~5 slots missed while beat was down collapsed into one firing, of the latest of
    # them; then the grid goes on, one slot per second.
    assert after[0] - slots[len(before) - 1] >= 5, slots
    assert all(b - a == 1 for a, b in itertools.pairwise(after)), slots
    # It was the latest missed slot, not an older one followed by a burst: the next slot
    # went out on its own time.
    following = runs[len(before) + 1]
    assert following.created is not None
    assert following.created >= after[1]

    # A one-off missed by more than its starting deadline never runs; it is recorded skipped.
    (late,) = eventually(lambda: harness.records("down/late"), 10, message="late recorded")
    assert late.state == "SKIPPED"
    assert late.reason is not None
    assert "deadline" in late.reason
    # One still within its deadline fires once, at the restart.
    (in_time,) = harness.fired("down/in-time")
    assert in_time.slot == at
    assert in_time.created is not None
    assert in_time.created >= restarted

    metrics = harness.metrics.read()
    assert metrics["fired"] > fired_before
    assert metrics["missed"] >= 4  # the collapsed down/every slots and the late one-off
    assert metrics["lateness_count"] == metrics["fired"]
    buckets = sum(v for k, v in metrics.items() if k.startswith("le_"))
    assert buckets == metrics["fired"]
    # The in-time one-off went out seconds after its slot; the histogram shows it.
    late_by = in_time.created - at
    assert late_by > 2
    assert sum(v for k, v in metrics.items() if k.startswith("le_") and _le(k) >= 2) >= 1
    assert metrics["lateness_sum"] >= late_by


def _le(bucket: str) -> float:
    value = bucket.removeprefix("le_")
    return float("inf") if value == "inf" else float(value)


def test_every_firing_carries_headers_expiry_and_jitter(harness: Harness) -> None:
    beat = harness.beat()
    harness.wait_ready(beat)
    for i in range(20):
        harness.add(f"jit/e{i}", {"every": 3600}, jitter=5, deadline=30)
    harness.add("jit/plain", {"every": 3600})
    eventually(lambda: harness.client.llen(f"{PREFIX}default") == 21, 20, message="published")

    messages = [json.loads(m) for m in harness.client.lrange(f"{PREFIX}default", 0, -1)]
    by_schedule = {m["headers"][HEADER_SCHEDULE]: m["headers"] for m in messages}
    delays = []
    for i in range(20):
        headers = by_schedule[f"jit/e{i}"]
        slot = float(headers[HEADER_SLOT])
        assert headers[HEADER_UID] == f"uid-jit/e{i}"
        (record,) = harness.records(f"jit/e{i}")
        assert record.slot == slot
        eta = datetime.fromisoformat(headers["eta"]).timestamp()
        expires = datetime.fromisoformat(headers["expires"]).timestamp()
        delay = eta - slot
        delays.append(delay)
        assert 0 <= delay <= 5 + 0.5
        # The starting deadline counts from the (jittered) slot.
        assert abs(expires - (slot + delay + 30)) < 0.5
    # 20 uniform draws over 0..5 s: spread out, not bunched (bunching within 1 s: p < 1e-12).
    assert max(delays) - min(delays) > 1
    plain = by_schedule["jit/plain"]
    assert plain["eta"] is None
    assert plain["expires"] is None


def test_an_unreadable_entry_neither_stops_beat_nor_is_retried_every_tick(
    harness: Harness,
) -> None:
    # Written behind the model's back, as a newer version might during a rolling upgrade:
    # an unknown field and a cron this version cannot parse.
    bad = "forwarder:skew/bad"
    definition = {
        "name": "skew/bad",
        "task": "forwarder.ping",
        "schedule": {"cron": "61 * * * *"},
        "calendar": "new-in-v2",
    }
    harness.client.hset(bad, mapping={"definition": json.dumps(definition), "rev": 1})
    harness.client.zadd("forwarder::schedule", {bad: time.time() - 1})
    harness.client.sadd("forwarder::entries", "skew/bad")
    harness.add("skew/good", {"every": 3600})

    app = Core.from_settings(Settings(redis_url=harness.url, beat_max_loop_interval=0.1)).app
    scheduler = ForwarderScheduler(app)
    try:
        scheduler.tick()
        scheduler.tick()
    finally:
        scheduler.close()
    assert len(harness.fired("skew/good")) == 1
    assert harness.records("skew/bad") == []
    # Looked at again in a minute, not on every tick.
    assert harness.client.zscore("forwarder::schedule", bad) > time.time() + 50
