"""Operator killed (SIGKILL) in the middle of a burst of creates, updates and deletes, on the
Kubernetes emulator, and started again: afterwards the entries in Redis are exactly the live
resources, each at its latest generation and spec. No orphan and no gap.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from forwarder_worker import Core
from forwarder_worker.schedules.store import ScheduleStore
from support.kube_emulator import served_emulator
from support.operator_process import API, PROBE, start_operator, wait_until_watching
from support.processes import (
    eventually,
    forwarder_env,
    running,
)

SWEEP = 2.0
OPERATIONS = 200
FAST = {
    "FORWARDER_OPERATOR_STATUS_INTERVAL": "0.5",
    "FORWARDER_OPERATOR_SWEEP_INTERVAL": str(SWEEP),
}


def _body(name: str, version: int, every: str = "1h") -> dict[str, Any]:
    return {
        "apiVersion": "forwarder.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": name},
        "spec": {
            "task": "forwarder.ping",
            "kwargs": {"version": version},
            "schedule": {"every": every},
        },
    }


def _live(kube: httpx.Client) -> dict[str, dict[str, Any]]:
    items = kube.get(API).json()["items"]
    names = {f"default/{i['metadata']['name']}": i for i in items}
    return {n: i for n, i in names.items() if not n.startswith(f"default/{PROBE}")}


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


def _apply(kube: httpx.Client, op: str, name: str, versions: dict[str, int]) -> None:
    if op == "create":
        versions[name] = 1
        reply = kube.post(API, json=_body(name, 1))
        assert reply.status_code in (200, 201), reply.text
    elif op == "update":
        if name not in versions:
            return  # deleted already, or not created yet: nothing to update
        versions[name] += 1
        reply = kube.patch(
            f"{API}/{name}",
            json={"spec": {"kwargs": {"version": versions[name]}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert reply.status_code == 200, reply.text
    else:
        versions.pop(name, None)
        reply = kube.delete(f"{API}/{name}")
        assert reply.status_code in (200, 202), reply.text


def _mismatch(kube: httpx.Client, store: ScheduleStore, versions: dict[str, int]) -> list[str]:
    """How the entries differ from the live resources (empty: converged)."""
    live = _live(kube)
    problems = [
        f"{n}: being deleted" for n, i in live.items() if i["metadata"].get("deletionTimestamp")
    ]
    expected = {f"default/{n}" for n in versions}
    problems += [f"{n}: resource should not exist" for n in set(live) - expected]
    problems += [f"{n}: resource missing" for n in expected - set(live)]
    entries = {
        s.entry.name: s.entry
        for s in store.entries()
        if not s.entry.name.startswith(f"default/{PROBE}")
    }
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
    tmp_path: Path, redis_url: str, rclient: redis.Redis, core: Core, logs: Path
) -> None:
    store = core.store
    with served_emulator(tmp_path / "kube") as cluster:
        env = forwarder_env(redis_url, KUBECONFIG=str(cluster.kubeconfig), **FAST)
        first = start_operator(env, logs / "operator-1.log", "operator-1")
        with running(first), httpx.Client(base_url=cluster.url, timeout=30) as kube:
            ops, versions = _plan(random.Random(8)), {}
            wait_until_watching(kube, "a")
            half, three_quarters = OPERATIONS // 2, OPERATIONS * 3 // 4
            for op, name in ops[:half]:
                _apply(kube, op, name, versions)
            # Killed mid-burst: a quarter of the changes land while no operator runs, the rest
            # once the new one watches.
            first.signal(9)
            first.popen.wait(10)
            for op, name in ops[half:three_quarters]:
                _apply(kube, op, name, versions)
            second = start_operator(env, logs / "operator-2.log", "operator-2")
            with running(second):
                wait_until_watching(kube, "b")
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
