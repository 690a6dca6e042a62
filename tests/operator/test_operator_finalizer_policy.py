"""The operator's finalizer set at creation by the API server (manifests/admission: a
MutatingAdmissionPolicy, which the chart installs on Kubernetes 1.36+), on the real
control plane:

* a ScheduledTask is created with the finalizer, and the operator makes it Ready with one
  write (its status) and no write to the resource itself; deleting it still takes its entry
  along and releases it;
* an object created with the finalizer but not yet reconciled is left to its handler by the
  sweep (which repairs only objects a reconcile has written status to), while an object
  reconciled once whose entry is lost is repaired.

Without the policy the operator adds the finalizer itself: the rest of the operator suite runs
that way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from forwarder_operator.loops import sweep
from forwarder_operator.services import Services
from forwarder_operator.settings import OperatorSettings
from forwarder_worker.names import FINALIZER
from support.controlplane import ControlPlane
from support.operator_process import operator_in_thread
from support.processes import eventually
from support.scheduled_tasks import finalizer_policy

pytestmark = pytest.mark.cluster

HOURLY = {"task": "forwarder.ping", "schedule": {"every": "1h"}}


def writes(plane: ControlPlane) -> dict[str, int]:
    """The API server's count of answered PATCHes and PUTs of ScheduledTasks, by resource
    (``scheduledtasks`` or ``scheduledtasks/status``)."""
    counts: dict[str, int] = {}
    for key, value in plane.requests_served().items():
        verb, resource, _code = key.split(" ")
        if verb in ("PATCH", "PUT", "APPLY") and resource.startswith("scheduledtasks"):
            counts[resource] = counts.get(resource, 0) + value
    return counts


def test_an_admitted_finalizer_leaves_the_operator_one_write(
    crds: ControlPlane,
    kube: Any,
    namespace: str,
    operator_env: dict[str, str],
    entry_of: Any,
) -> None:
    with finalizer_policy(crds, namespace):
        created = kube.create("admitted", HOURLY)
        assert created["metadata"]["finalizers"] == [FINALIZER]
        before = writes(crds)
        with operator_in_thread(operator_env):
            eventually(lambda: kube.ready("admitted").get("status") == "True", 30)
            assert entry_of(f"{namespace}/admitted") is not None
            after = writes(crds)
            # Only this test's operator writes now: one status PATCH, nothing else.
            assert (
                after.get("scheduledtasks/status", 0) - before.get("scheduledtasks/status", 0) == 1
            ), (before, after)
            assert after.get("scheduledtasks", 0) == before.get("scheduledtasks", 0), (
                before,
                after,
            )

            kube.delete("admitted")
            eventually(lambda: kube.get("admitted") is None, 30, message="released")
            assert entry_of(f"{namespace}/admitted") is None


def test_the_sweep_leaves_new_objects_to_their_handler(
    crds: ControlPlane,
    kube: Any,
    namespace: str,
    redis_url: str,
    operator_env: dict[str, str],
    operator_kubeconfig: Path,
    entry_of: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube.create("reconciled", HOURLY)
    with operator_in_thread(operator_env):
        eventually(lambda: kube.ready("reconciled").get("status") == "True", 30)
    # Created while no operator runs: the finalizer from the policy, no status yet.
    with finalizer_policy(crds, namespace):
        kube.create("fresh", HOURLY)
    fresh = kube.get("fresh")
    assert FINALIZER in fresh["metadata"]["finalizers"] and "status" not in fresh

    monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig))
    services = Services.create(
        OperatorSettings(redis_url=redis_url, operator_namespaces=[namespace])
    )
    try:
        services.forget(f"{namespace}/reconciled")  # its entry lost (Redis flushed)
        removed, repaired = sweep(services)
    finally:
        services.close()
    assert (removed, repaired) == ([], [f"{namespace}/reconciled"])
    assert entry_of(f"{namespace}/reconciled") is not None
    assert entry_of(f"{namespace}/fresh") is None
    assert kube.get("fresh")["metadata"]["resourceVersion"] == fresh["metadata"]["resourceVersion"]
