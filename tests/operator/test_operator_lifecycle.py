"""A ScheduledTask's whole life on a real API server, with the real operator as its own
ServiceAccount (manifests/rbac), a real worker and a real beat.

apply -> entry and Ready with nextRunTime; firings -> lastRun SUCCESS and a growing
totalRunCount; spec update -> entry and observedGeneration follow; suspend and resume;
run-now; delete -> entry gone, finalizer removed, object gone. The operator watches the
test's namespace only, and nothing it asked of the API server was refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.operator_process import operator_in_thread
from support.processes import celery_beat, celery_worker, eventually, running

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_scheduled_task_lifecycle(
    kube: Any,
    namespace: str,
    operator_env: dict[str, str],
    entry_of: Any,
    rclient: Any,
    logs: Path,
) -> None:
    worker = celery_worker(operator_env, logs / "worker.log")
    beat = celery_beat(operator_env, logs / "beat.log")
    with running(worker, beat), operator_in_thread(operator_env):
        kube.create("pinger", {"task": "forwarder.ping", "schedule": {"every": "1s"}})

        # apply -> entry with the right schedule -> Ready with nextRunTime
        entry = eventually(lambda: entry_of(f"{namespace}/pinger"), 20, message="entry created")
        assert entry["schedule"] == {"every": 1}
        assert entry["task"] == "forwarder.ping"
        ready = eventually(
            lambda: kube.ready("pinger").get("status") == "True" and kube.ready("pinger"), 20
        )
        assert ready["reason"] == "Scheduled"
        # Every field of the condition survived the CRD's schema (it prunes what it lacks).
        assert set(ready) == {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        }
        status = kube.status("pinger")
        assert status["observedGeneration"] == 1
        assert status["schedule"] == "every 1s"
        assert status["nextRunTime"].endswith("Z")
        obj = kube.get("pinger")
        assert obj["metadata"]["finalizers"] == ["forwarder.dev/finalizer"]

        # firings -> lastRun SUCCESS, totalRunCount grows
        eventually(
            lambda: kube.status("pinger").get("lastRun", {}).get("state") == "SUCCESS",
            40,
            message="a successful run in status",
        )
        first = kube.status("pinger")["totalRunCount"]
        eventually(lambda: kube.status("pinger").get("totalRunCount", 0) > first + 1, 30)
        status = kube.status("pinger")
        assert status["lastScheduleTime"].endswith("Z")
        assert status["lastSuccessfulTime"].endswith("Z")
        assert 1 <= len(status["recentRuns"]) <= 10
        assert status["recentRuns"][0]["taskId"] == status["lastRun"]["taskId"]

        # a spec update -> the entry changes, observedGeneration follows
        kube.patch("pinger", {"spec": {"schedule": {"every": "1m"}, "runHistoryLimit": 2}})
        eventually(
            lambda: (entry_of(f"{namespace}/pinger") or {}).get("schedule") == {"every": 60}, 20
        )
        assert entry_of(f"{namespace}/pinger")["generation"] == 2
        eventually(lambda: kube.status("pinger").get("observedGeneration") == 2, 20)
        assert kube.status("pinger")["schedule"] == "every 60s"
        eventually(lambda: len(kube.status("pinger").get("recentRuns", [])) <= 2, 20)

        # suspend: the entry leaves the due set, nextRunTime goes; resume brings it back
        kube.patch("pinger", {"spec": {"suspend": True}})
        eventually(lambda: kube.ready("pinger").get("reason") == "Suspended", 20)
        assert rclient.zscore("forwarder::schedule", f"forwarder:{namespace}/pinger") is None
        assert "nextRunTime" not in kube.status("pinger")
        kube.patch("pinger", {"spec": {"suspend": False}})
        eventually(lambda: kube.ready("pinger").get("reason") == "Scheduled", 20)
        assert rclient.zscore("forwarder::schedule", f"forwarder:{namespace}/pinger") is not None
        eventually(lambda: "nextRunTime" in kube.status("pinger"), 10)

        # run-now: one run per distinct value (every 60s, so no firing gets in the way)
        eventually(lambda: not rclient.smembers(f"forwarder:runs:active:{namespace}/pinger"), 20)
        before = kube.status("pinger")["totalRunCount"]
        kube.patch("pinger", {"metadata": {"annotations": {"forwarder.dev/run-now": "one"}}})
        eventually(lambda: kube.status("pinger").get("totalRunCount") == before + 1, 30)
        assert kube.status("pinger")["lastRun"]["source"] == "trigger"
        kube.patch("pinger", {"metadata": {"labels": {"touched": "yes"}}})  # not a new value
        kube.patch("pinger", {"metadata": {"annotations": {"forwarder.dev/run-now": "two"}}})
        eventually(lambda: kube.status("pinger").get("totalRunCount") == before + 2, 30)

        # delete -> entry gone, finalizer removed, object gone
        kube.delete("pinger")
        eventually(lambda: kube.get("pinger") is None, 20, message="object gone")
        assert entry_of(f"{namespace}/pinger") is None
        assert not rclient.exists(f"forwarder:runs:stats:{namespace}/pinger")
