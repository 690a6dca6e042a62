"""Benchmark 3, arming latency: from the store write of a new, immediately due schedule to its
first publish.

Each scheduler runs as a real ``celery beat`` subprocess on its own Valkey with a probe on the
broker queue. Trials write one new entry each (``bench.noop(i)``, every 3600 s, due at once)
at random gaps, without waiting for the previous one, so write times fall at random phases of
the beat's loop, as a user's would. Latency = probe stamp - time just before the write.

Forwarder and redbeat with a 1 s loop write 200 trials at gaps of 0.05-0.35 s. redbeat with its
default 300 s loop cannot arm faster than its loop, so its trials are spread over one whole
loop (about 295 s) and run in the background while the other benchmarks run (``SlowArming``).

The "from resource create on the apiserver with the operator running" variant runs on the
tests' real kube-apiserver and etcd (``bench/operator_scale.py``); it is measured only when
``forwarder_operator`` is present and the control plane can be built (``make controlplane``).
"""

from __future__ import annotations

import functools
import random
import threading
import time
from typing import Any

import operator_scale
import redis
from entries import anchor_app, arm_ours, arm_redbeat, index_of
from forwarder_worker import Core, Settings
from harness import (
    QueueProbe,
    Stack,
    redis_for,
    run_concurrently,
    show,
    start_beat,
    summarize,
    table,
    work_dir,
    write_result,
)

EVERY = 3600
TRIALS = 200
OURS = Stack("forwarder", "forwarder")
FAST = Stack("redbeat", "redbeat (1 s loop)", max_interval=1.0)
DEFAULT = Stack("redbeat", "redbeat (default 300 s loop)")


def scenario(stack: Stack, trials: int, gap: tuple[float, float], wait: float) -> dict[str, Any]:
    """Write ``trials`` new due entries at random gaps; latency of each to its publish."""
    logs = work_dir("arming")
    rng = random.Random(7)
    tag = f"{stack.label.split()[0]}-{stack.max_interval}"
    with redis_for(tag) as url, QueueProbe(url) as probe:
        client = redis.Redis.from_url(url, decode_responses=True)
        beat = start_beat(stack, url, logs / f"beat-{tag}.log")
        try:
            if stack.kind == "forwarder":
                store = Core.from_settings(Settings(redis_url=url)).store

                def write(i: int) -> None:
                    arm_ours(store, i, EVERY)
            else:
                app = anchor_app(url)

                def write(i: int) -> None:
                    arm_redbeat(app, i, EVERY)

            time.sleep(1.0)
            written: dict[int, float] = {}
            for i in range(trials):
                written[i] = time.time()
                write(i)
                time.sleep(rng.uniform(*gap))
            probe.wait_for(trials, timeout=wait)
        finally:
            beat.stop()
            client.close()
        landed = {index_of(m.args): m.at for m in probe.landed}
    latencies = [landed[i] - t for i, t in written.items() if i in landed]
    censored = [i for i in written if i not in landed]
    return {
        "scheduler": stack.label,
        "trials": trials,
        "fired": len(latencies),
        "not_fired_within_wait": len(censored),
        "wait_after_last_write_s": wait,
        "latency_s": summarize(latencies),
        "latency_samples": [round(x, 5) for x in latencies],
    }


class SlowArming(threading.Thread):
    """redbeat with its default loop: trials spread over one 300 s loop, in the background."""

    def __init__(self, trials: int = TRIALS) -> None:
        super().__init__(daemon=True)
        self.trials = trials
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            mean_gap = 295.0 / self.trials
            self.result = scenario(DEFAULT, self.trials, (0.5 * mean_gap, 1.5 * mean_gap), 330)
        except BaseException as exc:
            self.error = exc


def _operator_variant(trials: int) -> dict[str, Any]:
    why = operator_scale.missing()
    if why:
        return {"measured": False, "why": why}
    return {"measured": True, **operator_scale.arming_from_create(trials)}


def run(
    full: bool, sizes: list[int] | None = None, slow: SlowArming | None = None
) -> dict[str, Any]:
    trials = (sizes or [TRIALS])[0]
    if slow is None:
        slow = SlowArming(trials)
        slow.start()
    ours, fast = run_concurrently(
        [functools.partial(scenario, stack, trials, (0.05, 0.35), 30) for stack in (OURS, FAST)]
    )
    slow.join()
    if slow.error is not None:
        raise slow.error
    assert slow.result is not None
    default = slow.result
    # Quick mode: half the trials from a resource create (each is a ScheduledTask through the
    # real apiserver and operator), to keep `make bench` within its 10 minutes.
    create = _operator_variant(trials if full or sizes else trials // 2)
    rows = []
    for anchor, short in ((default, "rb300"), (fast, "rb1")):
        for q in ("p50", "p99"):
            rows.append(
                (
                    f"{short}: store write -> publish {q}",
                    anchor["latency_s"][q] * 1000,
                    ours["latency_s"][q] * 1000,
                    "ms",
                )
            )
    show(f"Arming latency, {trials} trials (lower is better)", rows)
    if create["measured"]:
        got = create["latency_s"]
        print(
            f"   resource create -> publish (operator, {create['trials']} trials): "
            f"p50 {got['p50'] * 1000:.1f} ms, "
            f"p99 {got['p99'] * 1000:.1f} ms ({create['fired']}/{create['trials']} fired); "
            f"create -> store p50 {create['create_to_store_s']['p50'] * 1000:.1f} ms / "
            f"p99 {create['create_to_store_s']['p99'] * 1000:.1f} ms, "
            f"store -> publish p50 {create['store_to_publish_s']['p50'] * 1000:.1f} ms / "
            f"p99 {create['store_to_publish_s']['p99'] * 1000:.1f} ms"
        )
    else:
        print(f"   resource create -> publish: not measured ({create['why']})")
    data = {
        "mode": "full" if full else "quick",
        "drive": "real `celery beat` subprocesses, each on its own Valkey; Forwarder and "
        "redbeat-1s at the same time, redbeat-300s in the background over one whole loop",
        "target": "p99 under 100 ms from the store write; under 500 ms from the resource create",
        "results": [ours, fast, default],
        "from_resource_create": create,
        "rows": table(rows),
    }
    write_result("arming", data)
    return data
