"""HA with kopf peering: two replicas with distinct priorities, and only the higher one
handles ScheduledTasks (``forwarder operator --peering NAME --priority N``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.processes import eventually, running

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# kopf's cluster-wide peering CRD, as kopf documents it (installed with peering on).
PEERING_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
    "spec": {
        "scope": "Cluster",
        "group": "kopf.dev",
        "names": {
            "kind": "ClusterKopfPeering",
            "plural": "clusterkopfpeerings",
            "singular": "clusterkopfpeering",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_only_the_highest_priority_replica_handles(
    kube: Any, operator_env: dict[str, str], spawn_operator: Any, logs: Path
) -> None:
    created = kube.http.post(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=PEERING_CRD
    )
    assert created.status_code == 201, created.text
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": "forwarder"},
    }
    assert kube.http.post("/apis/kopf.dev/v1/clusterkopfpeerings", json=peering).status_code == 201

    low = spawn_operator(
        operator_env, logs / "low.log", "--peering=forwarder", "--priority=10", via="cli"
    )
    high = spawn_operator(
        operator_env, logs / "high.log", "--peering=forwarder", "--priority=20", via="cli"
    )
    with running(low, high):

        def priorities() -> list[int]:
            reply = kube.http.get("/apis/kopf.dev/v1/clusterkopfpeerings/forwarder").json()
            return sorted(peer["priority"] for peer in (reply.get("status") or {}).values())

        eventually(lambda: priorities() == [10, 20], 30, message="both replicas in the peering")
        kube.create("ha", {"task": "forwarder.ping", "schedule": {"every": "1h"}})
        eventually(lambda: kube.ready("ha").get("status") == "True", 30)
        eventually(lambda: "[default/ha] every 3600s" in high.output(), 10)
        # The lower replica stays paused (kopf logs "Pausing" only if it had resumed first).
        assert "default/ha" not in low.output()
        assert "Pausing" not in high.output()
