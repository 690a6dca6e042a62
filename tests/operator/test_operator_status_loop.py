"""The cluster-wide status loop and the operator's settings, on the real API server with the
operator's own ServiceAccount: only changed resources are patched (through the status
subresource); only the configured namespaces are watched (and swept); liveness answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from forwarder_operator.loops import StatusWriter
from forwarder_operator.services import Services
from forwarder_operator.settings import OperatorSettings
from forwarder_worker.model import parse_spec
from forwarder_worker.reconcile import apply_schedule
from forwarder_worker.store import Entry, ScheduleStore
from kubernetes.config import kube_config
from support.controlplane import ControlPlane
from support.operator_process import running_operator
from support.processes import eventually, free_port

pytestmark = pytest.mark.cluster

HOURLY = {"task": "forwarder.ping", "schedule": {"every": "1h"}}


def test_status_loop_patches_only_changed_resources(
    kube: Any,
    namespace: str,
    operator_kubeconfig: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The loop's Kubernetes client finds the operator's kubeconfig as a process started
    # with KUBECONFIG would.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(operator_kubeconfig))
    config = OperatorSettings(
        redis_url=redis_url, run_history_limit=100, operator_namespaces=[namespace]
    )
    services = Services.create(config)
    try:
        for name in ("a", "b", "c"):
            created = kube.create(name, {**HOURLY, "runHistoryLimit": 2})
            apply_schedule(services.store, namespace, name, created["spec"], uid="u", generation=1)
        writer = StatusWriter(services)
        writer.pass_once()  # whatever the setup changed
        assert writer.pass_once() == 0

        for i in range(3):
            run_id = f"run-{i}"
            schedule = f"{namespace}/b"
            services.runs.queued(run_id, "forwarder.ping", source="schedule", schedule=schedule)
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
    crds: ControlPlane,
    kube: Any,
    namespace: str,
    operator_env: dict[str, str],
    rclient: Any,
    logs: Path,
) -> None:
    mine, theirs = namespace, f"{namespace}-b"
    crds.create_namespace(theirs)
    store = ScheduleStore(rclient, "forwarder:")
    # Another install's entry in a namespace this operator does not watch: never swept.
    foreign = f"{theirs}/foreign"
    store.upsert(Entry.from_spec(foreign, parse_spec(HOURLY), uid="x", generation=1))
    port = free_port()
    # The namespaces from settings (operator_env: this test's), the liveness endpoint from
    # `forwarder operator`'s flags.
    assert operator_env["FORWARDER_OPERATOR_NAMESPACES"] == mine
    liveness = f"--liveness=http://127.0.0.1:{port}/healthz"
    kube.create("mine", HOURLY)
    kube.create("theirs", HOURLY, namespace=theirs)
    with running_operator(operator_env, logs / "operator.log", liveness, via="cli"):
        eventually(lambda: kube.ready("mine").get("status") == "True", 30)
        health = eventually(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json(), 20
        )
        assert health == {"redis": True}
        kube.create("later", HOURLY)
        eventually(lambda: kube.ready("later").get("status") == "True", 30)
        assert kube.ready("theirs", theirs) == {}
        assert kube.get("theirs", theirs)["metadata"].get("finalizers") is None
        assert store.names() == {f"{mine}/mine", f"{mine}/later", foreign}
