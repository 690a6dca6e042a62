"""HA with kopf peering: two replicas with distinct priorities, each as the operator's own
ServiceAccount, and only the higher one handles ScheduledTasks (``forwarder operator
--peering NAME --priority N``).

Both peering modes are shown with manifests/rbac's peering role and manifests/crds' peering
CRDs: a ClusterKopfPeering when the operator watches every namespace (the default
deployment), a KopfPeering in the namespace when it watches one. kopf does not create the
peering object, so the test creates it as whoever installs Forwarder would; without it kopf
would keep every replica paused for good, without a word above debug level, so ``forwarder
operator`` refuses to start with one line that says what to create.
"""

from __future__ import annotations

import http.server
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from forwarder_operator.main import check_peering
from forwarder_operator.settings import OperatorSettings
from support.http_stub import serving, stub_kubeconfig
from support.operator_process import COMMANDS, assert_never_refused, running_operator
from support.processes import REPO, eventually

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
        # The higher replica joins first. A replica given --peering starts paused and resumes
        # when the peering it reads holds no higher peer; had the lower one started alone it
        # would resume, and it pauses again only once its own watch delivers the higher one's
        # entry, which may come after the peering object already lists both.
        with running_operator(env, logs / "high.log", *flags, "--priority=20", via="cli") as high:
            eventually(
                lambda: priorities() == [20], 30, message="the higher replica in the peering"
            )
            with running_operator(env, logs / "low.log", *flags, "--priority=10", via="cli") as low:
                eventually(
                    lambda: priorities() == [10, 20], 30, message="both replicas in the peering"
                )
                kube.create("ha", {"task": "forwarder.ping", "schedule": {"every": "1h"}})
                eventually(lambda: kube.ready("ha").get("status") == "True", 30)
                eventually(lambda: f"[{namespace}/ha] every 3600s" in high.output(), 10)
                # The lower replica never resumed, and handled nothing.
                assert "Resuming operations" not in low.output()
                assert f"{namespace}/ha" not in low.output()
                assert "Pausing" not in high.output()
        # Each replica took itself out of the peering as it stopped.
        assert priorities() == []
    finally:
        kube.http.delete(f"{path}/{peering}")


@pytest.mark.parametrize("scope", ["cluster-wide", "namespaced"])
def test_a_missing_peering_object_stops_the_operator_with_one_line(
    scope: str, crds: Any, namespace: str, env_for: Any, redis_url: str
) -> None:
    env = env_for(redis_url, namespaces=() if scope == "cluster-wide" else (namespace,))
    done = subprocess.run(
        [*COMMANDS["cli"], "--peering=nobody-made-this", "--priority=10"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    kind = "ClusterKopfPeering" if scope == "cluster-wide" else "KopfPeering"
    assert f"{kind} 'nobody-made-this' does not exist" in lines[0]
    if scope == "namespaced":
        assert f"in namespace {namespace}" in lines[0]
    assert "Traceback" not in done.stderr
    assert_never_refused(done.stdout + done.stderr, "forwarder operator")


def test_the_peering_check_leaves_other_answers_to_kopf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a 404 stops the start: an API server that refuses the read (here a 403) or does
    not answer yet is kopf's to wait for and report, as it does without ``--peering``."""

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(403, "not yours")

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Refusing) as url:
        for server in (url, "http://127.0.0.1:9"):
            kubeconfig = stub_kubeconfig(tmp_path / "kubeconfig", server)
            monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
            for namespaces in ([], ["team-a"]):
                config = OperatorSettings(operator_peering="p", operator_namespaces=namespaces)
                check_peering(config)  # no PeeringMissing, no other exception
