"""HA with kopf peering: two replicas with distinct priorities, each as the operator's own
ServiceAccount, and only the higher one handles ScheduledTasks (``forwarder operator
--peering NAME --priority N``).

Both peering modes are shown with manifests/rbac's peering role and manifests/crds' peering
CRDs: a ClusterKopfPeering when the operator watches every namespace (the default
deployment), a KopfPeering in the namespace when it watches one. kopf does not create the
peering object (without one, a peer's keep-alive finds nothing and every replica handles
everything), so the test creates it as whoever installs Forwarder would.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from support.operator_process import running_operator
from support.processes import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.mark.parametrize("scope", ["cluster-wide", "namespaced"])
def test_only_the_highest_priority_replica_handles(
    scope: str,
    kube: Any,
    namespace: str,
    env_for: Any,
    redis_url: str,
    logs: Path,
    request: pytest.FixtureRequest,
) -> None:
    peering = f"forwarder-{uuid.uuid4().hex[:6]}"
    if scope == "cluster-wide":
        request.getfixturevalue("every_namespace")
        env = env_for(redis_url, namespaces=())
        path = "/apis/kopf.dev/v1/clusterkopfpeerings"
        kind = "ClusterKopfPeering"
    else:
        env = env_for(redis_url)
        path = f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings"
        kind = "KopfPeering"
    body = {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": {"name": peering}}
    created = kube.http.post(path, json=body)
    assert created.status_code == 201, created.text

    def priorities() -> list[int]:
        reply = kube.http.get(f"{path}/{peering}").json()
        return sorted(peer["priority"] for peer in (reply.get("status") or {}).values())

    flags = (f"--peering={peering}",)
    try:
        with (
            running_operator(env, logs / "low.log", *flags, "--priority=10", via="cli") as low,
            running_operator(env, logs / "high.log", *flags, "--priority=20", via="cli") as high,
        ):
            eventually(lambda: priorities() == [10, 20], 30, message="both replicas in the peering")
            kube.create("ha", {"task": "forwarder.ping", "schedule": {"every": "1h"}})
            eventually(lambda: kube.ready("ha").get("status") == "True", 30)
            eventually(lambda: f"[{namespace}/ha] every 3600s" in high.output(), 10)
            # The lower replica stays paused (kopf logs "Pausing" only if it had resumed first).
            assert f"{namespace}/ha" not in low.output()
            assert "Pausing" not in high.output()
        # Each replica took itself out of the peering as it stopped.
        assert priorities() == []
    finally:
        kube.http.delete(f"{path}/{peering}")
