"""Batched, fair dispatch: a burst of 2,000 entries due at once is published in full, each
entry once, and entries of other namespaces are not starved behind it.

Fairness, precisely: beat takes due entries in batches of ``beat_batch_size``, round-robin
across namespaces, from the earliest due (a look-ahead of 10 batches) plus the latest due.
So an entry of another namespace that is due when a batch is taken goes out in that batch:
at most one batch of the burst is published between its due time and its own publication.
"""

from __future__ import annotations

import signal
import time

from forwarder_worker.schedules.store import Entry, fair_share
from support.processes import eventually
from support.scheduler_harness import PREFIX, Harness

BURST = 2000
BATCH = 100


def test_burst_is_published_in_full_without_starving_other_namespaces(harness: Harness) -> None:
    beat = harness.beat(beat_batch_size=BATCH, beat_lock_timeout=60)
    harness.wait_ready(beat)
    # Freeze beat while the burst is written, so it finds all of it due at once.
    beat.signal(signal.SIGSTOP)
    due = time.time()
    for i in range(BURST):
        harness.store.upsert(
            Entry(name=f"burst/e{i:04d}", task="forwarder.ping", schedule={"at": due})
        )
    # Due with the burst, but its name sorts after all of it: slot order alone puts it last.
    harness.add("zzz-other/same-time", {"at": due})
    # Falls due just after beat resumes, in the middle of draining the burst.
    mid_at = time.time() + 0.05
    harness.add("mid/later", {"at": mid_at})
    fired_before = harness.metric("fired")
    beat.signal(signal.SIGCONT)

    total = BURST + 2
    eventually(lambda: harness.client.zcard(f"{PREFIX}runs") >= total, 90, 0.2, "every entry fired")
    time.sleep(0.5)
    # Every entry published exactly once: one message and one run record each.
    assert harness.client.llen(f"{PREFIX}default") == total
    assert harness.client.zcard(f"{PREFIX}runs") == total
    assert harness.metric("fired") - fired_before == total
    assert harness.client.zcard("forwarder::schedule") == 0

    order = sorted(harness.runs.recent(limit=total), key=lambda r: r.created or 0)
    names = [r.schedule for r in order]
    assert len(set(names)) == total
    burst_times = [r.created or 0 for r in order if (r.schedule or "").startswith("burst/")]
    print(f"burst of {BURST} published in {burst_times[-1] - burst_times[0]:.2f} s")

    # Due as the burst started: it went out in the first batch, not after 2,000 others.
    assert names.index("zzz-other/same-time") < BATCH
    # Fell due mid-burst: at most about one batch of the burst went out before it.
    (mid,) = harness.fired("mid/later")
    assert mid.created is not None
    assert mid_at < burst_times[-1], "the burst ended before mid/later fell due"
    overtaking = [t for t in burst_times if mid_at <= t < mid.created]
    assert len(overtaking) <= 2 * BATCH, f"{len(overtaking)} burst firings went first"


def test_fair_share_takes_namespaces_in_turn() -> None:
    due = ["a/1", "a/2", "a/3", "a/4", "b/1", "c/1", "c/2"]  # earliest due first

    def namespace(name: str) -> str:
        return name.partition("/")[0]

    assert fair_share(due, 4, key=namespace) == ["a/1", "b/1", "c/1", "a/2"]
    assert fair_share(due, 10, key=namespace) == ["a/1", "b/1", "c/1", "a/2", "c/2", "a/3", "a/4"]
