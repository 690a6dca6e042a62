"""Operator killed (SIGKILL) in the middle of a burst of creates, updates and deletes, on the
real API server with the operator as its own ServiceAccount, and started again: afterwards
the entries in Redis are exactly the live resources, each at its latest generation and spec.
No orphan and no gap, and the API server refused neither operator anything.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from forwarder_worker import Core
from forwarder_worker.schedules.store import ScheduleStore
from support.operator_process import operator_env, running_operator
from support.processes import eventually
from support.scheduled_tasks import ScheduledTasks

SWEEP = 2.0
OPERATIONS = 200
FAST = {
    "FORWARDER_OPERATOR_STATUS_INTERVAL": "0.5",
    "FORWARDER_OPERATOR_SWEEP_INTERVAL": str(SWEEP),
}


def _spec(version: int, every: str = "1h") -> dict[str, Any]:
    return {"task": "forwarder.ping", "kwargs": {"version": version}, "schedule": {"every": every}}


def _live(kube: ScheduledTasks) -> dict[str, dict[str, Any]]:
    return {f"{kube.namespace}/{i['metadata']['name']}": i for i in kube.items()}


def _plan(rng: random.Random) -> list[tuple[str, str]]:
    """OPERATIONS creates, updates and deletes: a third of the names created up front, the
    rest of the creates interleaved with updates and deletes of the early names."""
    early, late = OPERATIONS * 2 // 5, OPERATIONS // 5
    updates, deletes = OPERATIONS // 4, OPERATIONS - early - late - OPERATIONS // 4
    ops: list[tuple[str, str]] = [("create", f"st-{i:03d}") for i in range(early)]
    later = [("create", f"st-{i:03d}") for i in range(early, early + late)]
    later += [("update", f"st-{i % early:03d}") for i in range(updates)]
    later += [("delete", f"st-{i:03d}") for i in range(early - deletes, early)]
    rng.shuffle(later)
    ops += later
    assert len(ops) == OPERATIONS
    return ops


def _apply(kube: ScheduledTasks, op: str, name: str, versions: dict[str, int]) -> None:
    if op == "create":
        versions[name] = 1
        kube.create(name, _spec(1))
    elif op == "update":
        if name not in versions:
            return  # deleted already, or not created yet: nothing to update
        versions[name] += 1
        kube.patch(name, {"spec": {"kwargs": {"version": versions[name]}}})
    else:
        versions.pop(name, None)
        kube.delete(name)


def _mismatch(kube: ScheduledTasks, store: ScheduleStore, versions: dict[str, int]) -> list[str]:
    """How the entries differ from the live resources (empty: converged)."""
    live = _live(kube)
    problems = [
        f"{n}: being deleted" for n, i in live.items() if i["metadata"].get("deletionTimestamp")
    ]
    expected = {f"{kube.namespace}/{n}" for n in versions}
    problems += [f"{n}: resource should not exist" for n in set(live) - expected]
    problems += [f"{n}: resource missing" for n in expected - set(live)]
    entries = {s.entry.name: s.entry for s in store.entries()}
    problems += [f"{n}: orphan entry" for n in set(entries) - set(live)]
    problems += [f"{n}: no entry" for n in set(live) - set(entries)]
    for name in set(live) & set(entries):
        item, entry = live[name], entries[name]
        if entry.generation != item["metadata"]["generation"]:
            problems.append(
                f"{name}: generation {entry.generation} != {item['metadata']['generation']}"
            )
        if entry.uid != item["metadata"]["uid"] or entry.kwargs != item["spec"]["kwargs"]:
            problems.append(f"{name}: entry {entry.kwargs} != spec {item['spec']['kwargs']}")
    return sorted(problems)


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_operator_killed_mid_burst_converges_exactly(
    scheduled_tasks: ScheduledTasks,
    operator_kubeconfig: Path,
    redis_url: str,
    rclient: redis.Redis,
    core: Core,
    logs: Path,
) -> None:
    kube, namespace = scheduled_tasks, scheduled_tasks.namespace
    store = core.store
    env = operator_env(redis_url, operator_kubeconfig, [namespace], **FAST)
    ops, versions = _plan(random.Random(8)), {}
    quarter, half, three_quarters = OPERATIONS // 4, OPERATIONS // 2, OPERATIONS * 3 // 4
    with running_operator(env, logs / "operator-1.log", name="operator-1") as first:
        for op, name in ops[:quarter]:
            _apply(kube, op, name, versions)
        # Killed while it works: once it has made entries, before it has them all.
        eventually(lambda: store.names(), 60, 0.05, message="the first operator working")
        for op, name in ops[quarter:half]:
            _apply(kube, op, name, versions)
        first.signal(9)
        first.popen.wait(10)
    # A quarter of the changes land while no operator runs, the rest once the new one works.
    for op, name in ops[half:three_quarters]:
        _apply(kube, op, name, versions)
    late = {f"{namespace}/{name}" for op, name in ops[half:three_quarters] if op == "create"}
    with running_operator(env, logs / "operator-2.log", name="operator-2") as second:
        eventually(lambda: late & store.names(), 60, 0.1, message="the second operator working")
        for op, name in ops[three_quarters:]:
            _apply(kube, op, name, versions)
        try:
            eventually(lambda: not _mismatch(kube, store, versions), 120, 0.5)
        except AssertionError:
            raise AssertionError(_mismatch(kube, store, versions)) from None
        # And it stays converged: no late orphan removal or stale rewrite.
        time.sleep(SWEEP * 2)
        assert _mismatch(kube, store, versions) == []
        assert second.alive()
    assert len(versions) == OPERATIONS * 3 // 5 - (
        OPERATIONS - OPERATIONS * 3 // 5 - OPERATIONS // 4
    )
