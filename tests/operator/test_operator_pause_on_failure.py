"""Pause on failure from a resource on the real API server, with the real operator, beat and
worker: ``suspendAfterFailures`` failed runs in a row give Ready=False, reason
SuspendedAfterFailures, a Warning Event and the counts in status, and no more firings; each
new value of ``forwarder.dev/resume`` resumes it once, and so does a spec change. The
operator never writes the spec. The CRD refuses a value below 1.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support.operator_process import operator_in_thread
from support.processes import celery_beat, celery_worker, eventually, running

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

FAILING = {
    "task": "tests.fail",
    "schedule": {"every": "1s"},
    "suspendAfterFailures": 2,
}


def test_the_crd_refuses_a_pause_below_one(kube: Any) -> None:
    reply = kube.post("refused", {**FAILING, "suspendAfterFailures": 0})
    assert reply.status_code == 422 and "spec.suspendAfterFailures" in reply.json()["message"]


def test_failed_runs_in_a_row_suspend_and_resume(
    kube: Any, namespace: str, operator_env: dict[str, str], rclient: Any, logs: Path
) -> None:
    worker = celery_worker(operator_env, logs / "worker.log")
    beat = celery_beat(operator_env, logs / "beat.log")
    due = f"forwarder:{namespace}/fragile"

    def paused_warnings() -> list[dict[str, Any]]:
        return [w for w in kube.warnings("fragile") if w["reason"] == "SuspendedAfterFailures"]

    with running(worker, beat), operator_in_thread(operator_env):
        kube.create("fragile", FAILING)
        spec = kube.get("fragile")["spec"]
        eventually(lambda: kube.ready("fragile").get("reason") == "SuspendedAfterFailures", 40)
        ready = kube.ready("fragile")
        assert ready["status"] == "False" and "2 failed runs in a row" in ready["message"]
        (warning,) = eventually(paused_warnings, 20, message="the Warning Event")
        assert "forwarder.dev/resume" in warning["message"]
        status = kube.status("fragile")
        # Two in a row, or one more if a slot was already sent when the second failed.
        assert status["consecutiveFailures"] == status["failedRunCount"] in (2, 3)
        assert status["lastFailureTime"].endswith("Z")
        assert rclient.zscore("forwarder::schedule", due) is None
        total = status["totalRunCount"]
        time.sleep(2.5)
        assert kube.status("fragile")["totalRunCount"] == total
        assert kube.get("fragile")["spec"] == spec  # the operator never writes spec

        # Each new value of the annotation resumes once.
        kube.patch("fragile", {"metadata": {"annotations": {"forwarder.dev/resume": "r1"}}})
        eventually(lambda: any(e["reason"] == "Resumed" for e in kube.events("fragile")), 20)
        eventually(lambda: len(paused_warnings()) == 2, 40, message="paused a second time")
        assert kube.ready("fragile")["reason"] == "SuspendedAfterFailures"
        total = kube.status("fragile")["totalRunCount"]
        assert total >= 4
        kube.patch("fragile", {"metadata": {"labels": {"touched": "yes"}}})  # same value
        time.sleep(1.5)
        assert kube.ready("fragile")["reason"] == "SuspendedAfterFailures"
        assert kube.status("fragile")["totalRunCount"] == total

        # A spec change resumes too.
        kube.patch("fragile", {"spec": {"task": "forwarder.ping"}})
        eventually(
            lambda: (
                kube.status("fragile").get("succeededRunCount", 0) >= 1
                and kube.ready("fragile").get("reason") == "Scheduled"
            ),
            30,
        )
        assert kube.status("fragile")["consecutiveFailures"] == 0
