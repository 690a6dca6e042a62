"""The cluster-wide status loop and the operator's settings, on the real API server with the
operator's own ServiceAccount: only changed resources are patched (through the status
subresource); only the configured namespaces are watched (and swept); liveness answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from forwarder_operator.loops import StatusPass
from forwarder_operator.services import Services
from forwarder_operator.settings import OperatorSettings
from forwarder_worker import Core
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.reconcile import apply_schedule
from forwarder_worker.schedules.store import Entry
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
    monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig))
    config = OperatorSettings(
        redis_url=redis_url, run_history_limit=100, operator_namespaces=[namespace]
    )
    services = Services.create(config)
    try:
        for name, limit in (("a", 2), ("b", 2), ("c", 2), ("d", 10)):
            created = kube.create(name, {**HOURLY, "runHistoryLimit": limit})
            apply_schedule(services.store, namespace, name, created["spec"], uid="u", generation=1)
        writer = StatusPass(services)
        writer.pass_once()  # whatever the setup changed
        assert writer.pass_once() == 0

        # On b and d, one run of every shape status shows: succeeded (result, times), failed
        # (error), skipped (reason), and one from a trigger.
        runs, base = services.runs, 1.0e9
        for name in ("b", "d"):
            schedule = f"{namespace}/{name}"
            ran, failed, skipped, triggered = (f"{name}-{i}" for i in range(4))
            runs.queued(ran, "forwarder.ping", source="schedule", schedule=schedule, slot=base)
            runs.transition(ran, "STARTED", started=base + 0.5)
            runs.transition(ran, "SUCCESS", result='"pong"', finished=base + 1)
            runs.queued(failed, "forwarder.ping", source="schedule", schedule=schedule, slot=base)
            runs.transition(failed, "FAILURE", error_type="ValueError", error="x", finished=base)
            skip = runs.skipped_write(
                skipped, "forwarder.ping", schedule=schedule, slot=base, reason="Forbid"
            )
            runs.write(skip)
            runs.queued(triggered, "forwarder.ping", source="trigger", schedule=schedule)
            runs.transition(triggered, "SUCCESS", result='"pong"', finished=base + 5)
        assert writer.pass_once() == 2
        status = kube.status("b")
        assert status["lastRun"]["state"] == "SUCCESS"
        assert status["lastRun"]["source"] == "trigger"
        assert status["totalRunCount"] == 3  # a skipped firing is not a run
        assert len(status["recentRuns"]) == 2  # runHistoryLimit
        assert status["lastSuccessfulTime"].endswith("Z")
        assert "lastRun" not in kube.status("a") and "lastRun" not in kube.status("c")

        # The API server kept every field the operator wrote: the CRD's status schema would
        # prune one it does not declare, without an error.
        for name in ("b", "d"):
            written = writer.written[f"{namespace}/{name}"]
            stored = kube.status(name)
            assert {k: v for k, v in written.items() if v is not None} == {
                k: stored[k] for k in written if k in stored
            }, name
        fields = {field for run in kube.status("d")["recentRuns"] for field in run}
        assert fields == {
            "taskId",
            "state",
            "source",
            "scheduledAt",
            "startedAt",
            "finishedAt",
            "result",
            "error",
            "reason",
        }

        # A change that leaves status as it was is not written again.
        runs.transition("b-3", "SUCCESS")
        assert writer.pass_once() == 0
        assert writer.pass_once() == 0
    finally:
        services.close()


def test_watches_only_configured_namespaces_and_serves_liveness(
    crds: ControlPlane,
    kube: Any,
    namespace: str,
    operator_env: dict[str, str],
    core: Core,
    logs: Path,
) -> None:
    mine, theirs = namespace, f"{namespace}-b"
    crds.create_namespace(theirs)
    store = core.store
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
