"""The cluster-wide status loop and the operator's settings: only changed resources are
patched; only the configured namespaces are watched (and swept); liveness answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from forwarder_operator.loops import StatusWriter
from forwarder_operator.services import Services
from forwarder_operator.settings import OperatorSettings
from forwarder_worker import Core
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.reconcile import apply_schedule
from forwarder_worker.schedules.store import Entry
from kubernetes.config import kube_config
from support.kube_emulator import ServedCluster, free_port
from support.processes import eventually, running

pytestmark = pytest.mark.cluster

HOURLY = {"task": "forwarder.ping", "schedule": {"every": "1h"}}


def test_status_loop_patches_only_changed_resources(
    cluster: ServedCluster, kube: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig))
    services = Services.create(OperatorSettings(redis_url=redis_url, run_history_limit=100))
    try:
        for name in ("a", "b", "c"):
            created = kube.create(name, {**HOURLY, "runHistoryLimit": 2})
            apply_schedule(services.store, "default", name, created["spec"], uid="u", generation=1)
        writer = StatusWriter(services)
        writer.pass_once()  # whatever the setup changed
        assert writer.pass_once() == 0

        for i in range(3):
            run_id = f"run-{i}"
            services.runs.queued(run_id, "forwarder.ping", source="schedule", schedule="default/b")
            services.runs.transition(run_id, "SUCCESS", result='"pong"', finished=1.0e9 + i)
        assert writer.pass_once() == 1
        status = kube.status("b")
        assert status["lastRun"]["state"] == "SUCCESS"
        assert status["totalRunCount"] == 3
        assert len(status["recentRuns"]) == 2  # runHistoryLimit
        assert status["lastSuccessfulTime"].endswith("Z")
        assert "lastRun" not in kube.status("a") and "lastRun" not in kube.status("c")

        # A change that leaves status as it was is not written again.
        services.runs.transition("run-2", "SUCCESS")
        assert writer.pass_once() == 0
        assert writer.pass_once() == 0
    finally:
        services.close()


def test_watches_only_configured_namespaces_and_serves_liveness(
    kube: Any, operator_env: dict[str, str], spawn_operator: Any, core: Core, logs: Path
) -> None:
    store = core.store
    # Another install's entry in a namespace this operator does not watch: never swept.
    store.upsert(Entry.from_spec("team-b/foreign", parse_spec(HOURLY), uid="x", generation=1))
    port = free_port()
    # The namespaces from settings, the liveness endpoint from `forwarder operator`'s flags.
    env = {**operator_env, "FORWARDER_OPERATOR_NAMESPACES": "team-a"}
    liveness = f"--liveness=http://127.0.0.1:{port}/healthz"
    for namespace in ("team-a", "team-b"):
        kube.create_namespace(namespace)  # kopf resolves its namespaces from these
    kube.create("mine", HOURLY, namespace="team-a")
    kube.create("theirs", HOURLY, namespace="team-b")
    with running(spawn_operator(env, logs / "operator.log", liveness, via="cli")):
        eventually(lambda: kube.ready("mine", "team-a").get("status") == "True", 30)
        health = eventually(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json(), 20
        )
        assert health == {"redis": True}
        kube.create("later", HOURLY, namespace="team-a")
        eventually(lambda: kube.ready("later", "team-a").get("status") == "True", 30)
        assert kube.ready("theirs", "team-b") == {}
        assert store.names() == {"team-a/mine", "team-a/later", "team-b/foreign"}
