"""kubectl end to end: the real kubectl against the real API server, as a user would drive
it, with the operator as a subprocess (``python -m forwarder_operator``, what ``forwarder
operator`` runs) under its own ServiceAccount, and a real worker and beat: apply, wait for
Ready, the printer columns, short names and category, patch (suspend), annotate (run-now),
replace and server-side apply (the finalizer survives both), an invalid spec's Warning Event in ``kubectl get events`` and ``kubectl describe``, and a
delete that waits for the finalizer. Every kubectl call is bounded by ``timeout``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.controlplane import ControlPlane
from support.operator_process import running_operator
from support.processes import celery_beat, celery_worker, eventually, running

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HEARTBEAT = """
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata:
  name: heartbeat
spec:
  task: forwarder.ping
  kwargs: {note: from kubectl}
  schedule:
    every: 1s
"""

BROKEN = """
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata:
  name: broken
spec:
  task: forwarder.ping
  schedule:
    cron: "0 25 * * *"
"""


class Kubectl:
    """The real kubectl in the test's namespace, as the admin user."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.plane = plane
        self.namespace = namespace

    def kubectl(self, *args: str, **options: Any) -> Any:
        return self.plane.kubectl(f"--namespace={self.namespace}", *args, **options)


def jsonpath(cluster: Kubectl, name: str, path: str) -> str:
    return cluster.kubectl("get", "st", name, "-o", f"jsonpath={path}").stdout


def test_kubectl_end_to_end(
    crds: ControlPlane,
    kube: Any,
    namespace: str,
    operator_env: dict[str, str],
    entry_of: Any,
    logs: Path,
) -> None:
    cluster = Kubectl(crds, namespace)
    worker = celery_worker(operator_env, logs / "worker.log")
    beat = celery_beat(operator_env, logs / "beat.log")
    with running(worker, beat), running_operator(operator_env, logs / "operator.log"):
        # kubectl validates against the OpenAPI the API server publishes from the CRD.
        created = cluster.kubectl("apply", "-f", "-", stdin=HEARTBEAT)
        assert "scheduledtask.forwarder.dev/heartbeat created" in created.stdout
        cluster.kubectl(
            "wait", "--for=condition=Ready", "st/heartbeat", "--timeout=60s", timeout=70
        )
        assert entry_of(f"{namespace}/heartbeat")["kwargs"] == {"note": "from kubectl"}

        # printer columns, with the short names and the category
        eventually(
            lambda: jsonpath(cluster, "heartbeat", "{.status.lastRun.state}") == "SUCCESS",
            40,
            message="a successful run",
        )
        table = cluster.kubectl("get", "st").stdout.splitlines()
        header = table[0].split()
        assert header == [
            "NAME",
            "TASK",
            "SCHEDULE",
            "SUSPEND",
            "LAST",
            "LAST",
            "SCHEDULE",
            "NEXT",
            "AGE",
        ]
        row = table[1]
        # SUSPEND is the CRD's default, which the API server filled in.
        for value in ("heartbeat", "forwarder.ping", "every 1s", "false", "SUCCESS"):
            assert value in row, row
        assert row.index("SUCCESS") == table[0].index("LAST ")
        assert cluster.kubectl("get", "stask").stdout.splitlines()[0] == table[0]
        assert "heartbeat" in cluster.kubectl("get", "forwarder").stdout
        wide = cluster.kubectl("get", "st", "heartbeat", "-o", "wide").stdout
        assert "READY" in wide and "Scheduled" in wide

        # patch: suspend shows in SUSPEND and in the condition; generation 2 is observed
        cluster.kubectl(
            "patch", "st", "heartbeat", "--type=merge", "-p", '{"spec":{"suspend":true}}'
        )
        cluster.kubectl(
            "wait",
            "--for=jsonpath={.status.conditions[0].reason}=Suspended",
            "st/heartbeat",
            "--timeout=30s",
            timeout=40,
        )
        assert jsonpath(cluster, "heartbeat", "{.status.observedGeneration}") == "2"
        header, row = cluster.kubectl("get", "st", "heartbeat").stdout.splitlines()
        assert row[header.index("SUSPEND") :].startswith("true")

        # annotate run-now: one more run, from a trigger, even while suspended
        eventually(
            lambda: jsonpath(cluster, "heartbeat", "{.status.lastRun.state}") == "SUCCESS", 20
        )
        total = int(jsonpath(cluster, "heartbeat", "{.status.totalRunCount}"))
        cluster.kubectl("annotate", "st", "heartbeat", "forwarder.dev/run-now=first")
        eventually(
            lambda: jsonpath(cluster, "heartbeat", "{.status.totalRunCount}") == str(total + 1),
            30,
            message="the run-now run",
        )
        assert jsonpath(cluster, "heartbeat", "{.status.lastRun.source}") == "trigger"

        # get -o yaml: status in Kubernetes' conventions
        document = yaml.safe_load(cluster.kubectl("get", "st", "heartbeat", "-o", "yaml").stdout)
        status = document["status"]
        (condition,) = status["conditions"]
        assert condition["type"] == "Ready" and condition["status"] == "True"
        assert condition["reason"] == "Suspended"
        assert status["observedGeneration"] == 2
        assert status["lastRun"]["state"] == "SUCCESS"
        assert status["totalRunCount"] == total + 1
        assert "nextRunTime" not in status
        assert document["metadata"]["finalizers"] == ["forwarder.dev/finalizer"]

        # replace (a PUT of the whole object, which drops the finalizer it does not list):
        # the new spec is applied and the finalizer put back
        replaced = HEARTBEAT.replace("every: 1s", "every: 2s")
        cluster.kubectl("replace", "-f", "-", stdin=replaced)
        cluster.kubectl(
            "wait",
            "--for=jsonpath={.status.schedule}=every 2s",
            "st/heartbeat",
            "--timeout=30s",
            timeout=40,
        )
        assert jsonpath(cluster, "heartbeat", "{.status.conditions[0].reason}") == "Scheduled"
        assert entry_of(f"{namespace}/heartbeat")["schedule"] == {"every": 2}
        eventually(
            lambda: (
                jsonpath(cluster, "heartbeat", "{.metadata.finalizers}")
                == '["forwarder.dev/finalizer"]'
            ),
            20,
            message="the finalizer back",
        )
        # server-side apply, taking the fields kubectl's client-side apply owned
        applied = HEARTBEAT.replace("every: 1s", "every: 3s")
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=applied)
        eventually(lambda: entry_of(f"{namespace}/heartbeat")["schedule"] == {"every": 3}, 20)
        cluster.kubectl(
            "wait",
            "--for=jsonpath={.status.schedule}=every 3s",
            "st/heartbeat",
            "--timeout=30s",
            timeout=40,
        )
        assert jsonpath(cluster, "heartbeat", "{.metadata.finalizers}") == (
            '["forwarder.dev/finalizer"]'
        )

        # an invalid spec: Ready=False and a Warning event kubectl can list
        cluster.kubectl("apply", "-f", "-", stdin=BROKEN)
        cluster.kubectl(
            "wait",
            "--for=jsonpath={.status.conditions[0].reason}=InvalidSpec",
            "st/broken",
            "--timeout=30s",
            timeout=40,
        )
        events = eventually(
            lambda: json.loads(
                cluster.kubectl(
                    "get", "events", "--field-selector=involvedObject.name=broken", "-o", "json"
                ).stdout
            )["items"],
            20,
        )
        assert events[0]["type"] == "Warning"
        assert events[0]["reason"] == "InvalidSpec"
        assert "spec.schedule.cron" in events[0]["message"]
        described = cluster.kubectl("describe", "st", "broken").stdout
        assert "InvalidSpec" in described.split("Events:")[1], described
        assert "Ready" in described and "False" in described

        # delete: waits for the finalizer, then the object and its entry are gone
        deleted = cluster.kubectl(
            "delete", "st", "heartbeat", "broken", "--timeout=60s", timeout=70
        )
        assert 'scheduledtask.forwarder.dev "heartbeat" deleted' in deleted.stdout
        assert entry_of(f"{namespace}/heartbeat") is None
        left = cluster.kubectl("get", "st")
        assert "No resources found" in left.stderr
