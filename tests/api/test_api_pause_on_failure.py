"""Pause on failure in local mode, end to end: ``suspendAfterFailures: N`` failed runs in a
row stop the firings (a real beat, worker and folder source), the API's status says
Ready=False, SuspendedAfterFailures, with the counts, /metrics counts it, and it resumes with
``POST .../resume`` or a spec change (the file edited). Bad values are 422. In a cluster,
``POST .../resume`` sets the ``forwarder.dev/resume`` annotation for the real operator (409
when the resource's status does not say it is paused).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from forwarder_api.main import create_app
from forwarder_api.settings import ApiSettings
from pydantic import SecretStr
from support.chart_release import Release
from support.controlplane import ControlPlane
from support.operator_process import refusals
from support.processes import (
    BIN,
    celery_beat,
    celery_worker,
    eventually,
    forwarder_env,
    running,
    start,
)

FAILING = {
    "task": "tests.fail",
    "kwargs": {"message": "down"},
    "schedule": {"every": "1s"},
    "suspendAfterFailures": 2,
}


def status(api: httpx.Client, name: str) -> dict[str, Any]:
    body: dict[str, Any] = api.get(f"/schedules/default/{name}").json()
    return dict(body.get("status") or {})


def reason(api: httpx.Client, name: str) -> str | None:
    conditions = status(api, name).get("conditions") or []
    return conditions[0]["reason"] if conditions else None


def ran(api: httpx.Client, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(
        "/runs", params={"schedule": f"default/{name}", "limit": 200}
    ).json()["items"]
    return [r for r in items if r["state"] != "SKIPPED"]


def metric(api: httpx.Client, line: str) -> float:
    text = api.get("/metrics").text
    found = re.search(rf"^{re.escape(line)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_failed_runs_in_a_row_suspend_and_resume(stack: Any, api: httpx.Client) -> None:
    pauses = metric(api, "forwarder_scheduler_suspended_after_failures_total")
    created = api.post("/schedules", json={"metadata": {"name": "fragile"}, "spec": FAILING})
    assert created.status_code == 201, created.text

    eventually(lambda: reason(api, "fragile") == "SuspendedAfterFailures", 30, 0.1, "the pause")
    now = status(api, "fragile")
    (condition,) = now["conditions"]
    assert condition["status"] == "False"
    assert "after 2 failed runs in a row" in condition["message"]
    assert "forwarder.dev/resume" in condition["message"]
    # Two in a row, or one more if a slot was already sent when the second failed.
    assert now["consecutiveFailures"] == now["failedRunCount"] in (2, 3)
    assert now["succeededRunCount"] == 0
    assert now["lastFailureTime"].endswith("Z")
    assert now.get("nextRunTime") is None
    # No firing while suspended.
    count = len(ran(api, "fragile"))
    time.sleep(2.5)
    assert len(ran(api, "fragile")) == count == now["failedRunCount"]
    assert metric(api, 'forwarder_schedules{state="SuspendedAfterFailures"}') == 1
    # `forwarder status` says it where it shows suspend.
    shown = subprocess.run(
        [str(BIN / "forwarder"), "status", "--redis-url", stack.redis_url],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    (row,) = [line for line in shown.splitlines() if line.startswith("default/fragile ")]
    assert f"after {now['failedRunCount']} failures" in row
    assert metric(api, "forwarder_scheduler_suspended_after_failures_total") == pauses + 1

    # POST .../resume: fires again from now, the count in a row starts again.
    resumed = api.post("/schedules/default/fragile/resume")
    assert resumed.status_code == 202, resumed.text
    assert resumed.json() == {
        "namespace": "default",
        "name": "fragile",
        "resumed": True,
        "resume": None,
    }
    assert reason(api, "fragile") == "Scheduled"
    again = api.post("/schedules/default/fragile/resume")
    assert again.status_code == 409 and "not suspended after failures" in again.text
    eventually(lambda: reason(api, "fragile") == "SuspendedAfterFailures", 30, 0.1, "paused again")
    assert len(ran(api, "fragile")) >= count + 2
    assert status(api, "fragile")["consecutiveFailures"] in (2, 3)
    assert metric(api, "forwarder_scheduler_suspended_after_failures_total") == pauses + 2

    # `forwarder resume` does what POST .../resume does, on the same Redis.
    def forwarder_resume(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "forwarder"), "resume", name, "--redis-url", stack.redis_url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    done = forwarder_resume("default/fragile")
    assert (done.returncode, done.stdout, done.stderr) == (0, "default/fragile: resumed\n", "")
    assert reason(api, "fragile") == "Scheduled"
    for name, says in [
        ("default/fragile", "default/fragile is not suspended after failures (or is not in Redis)"),
        ("fragile", "'fragile' is not NAMESPACE/NAME"),
    ]:
        refused = forwarder_resume(name)
        assert (refused.returncode, refused.stdout) == (2, ""), refused
        assert refused.stderr.splitlines() == [f"forwarder resume: {says}"]
    eventually(lambda: reason(api, "fragile") == "SuspendedAfterFailures", 30, 0.1, "paused again")
    assert metric(api, "forwarder_scheduler_suspended_after_failures_total") == pauses + 3

    # A spec change resumes too: a task that succeeds now resets the count.
    patched = api.patch(
        "/schedules/default/fragile",
        json={"spec": {"task": "forwarder.ping", "kwargs": None}},
    )
    assert patched.status_code == 200, patched.text
    eventually(
        lambda: status(api, "fragile").get("succeededRunCount", 0) >= 1, 30, 0.1, "a success"
    )
    assert status(api, "fragile")["consecutiveFailures"] == 0
    assert reason(api, "fragile") == "Scheduled"
    assert api.delete("/schedules/default/fragile").status_code == 204


def test_bad_suspend_after_failures_is_refused(api: httpx.Client) -> None:
    for value, words in ((0, "greater than or equal to 1"), (-2, "greater than or equal to 1")):
        response = api.post(
            "/schedules",
            json={
                "metadata": {"name": "bad-pause"},
                "spec": {**FAILING, "suspendAfterFailures": value},
            },
        )
        assert response.status_code == 422
        assert response.json()["detail"] == f"spec.suspendAfterFailures: Input should be {words}"
    assert api.post("/schedules/default/nope/resume").status_code == 404


FAST = {"FORWARDER_OPERATOR_STATUS_INTERVAL": "0.3", "FORWARDER_OPERATOR_SWEEP_INTERVAL": "2"}
TOKEN = "pause-token"


@pytest.mark.cluster
def test_resume_through_the_api_in_a_cluster(
    redis_url: str, crds: ControlPlane, namespace: str, chart_release: Release, logs: Path
) -> None:
    kubeconfig = chart_release.kubeconfig("operator")
    env = forwarder_env(redis_url, KUBECONFIG=str(kubeconfig), **FAST)
    operator = start([sys.executable, "-m", "forwarder_operator"], env, logs / "op.log", "operator")
    worker = celery_worker(env, logs / "worker.log")
    beat = celery_beat(env, logs / "beat.log")
    settings = ApiSettings(
        redis_url=redis_url,
        api_tokens=[SecretStr(TOKEN)],
        task_modules=["support.sample_tasks"],
        schedules_mode="kubernetes",
        kubeconfig=chart_release.kubeconfig("api"),
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with running(operator, worker, beat), TestClient(create_app(settings), headers=headers) as api:
        path = f"/schedules/{namespace}/fragile"

        def why() -> str | None:
            conditions = (api.get(path).json().get("status") or {}).get("conditions") or []
            return conditions[0]["reason"] if conditions else None

        created = api.post(
            "/schedules",
            json={"metadata": {"name": "fragile", "namespace": namespace}, "spec": FAILING},
        )
        assert created.status_code == 201, created.text
        eventually(lambda: why() == "SuspendedAfterFailures", 60, 0.2, "the pause")
        failed = api.get(path).json()["status"]["failedRunCount"]
        resumed = api.post(f"{path}/resume")
        assert resumed.status_code == 202, resumed.text
        value = resumed.json()["resume"]
        assert value and resumed.json()["resumed"] is False
        assert api.get(path).json()["metadata"]["annotations"]["forwarder.dev/resume"] == value
        # The operator resumes it: it fails twice more, and is paused again.
        eventually(
            lambda: (
                api.get(path).json()["status"]["failedRunCount"] >= failed + 2
                and why() == "SuspendedAfterFailures"
            ),
            60,
            0.2,
            "resumed, then paused again",
        )
        # Not paused: 409, and no annotation written.
        api.patch(path, json={"spec": {"task": "forwarder.ping"}})
        eventually(lambda: why() == "Scheduled", 60, 0.2, "resumed by the spec change")
        refused = api.post(f"{path}/resume")
        assert refused.status_code == 409 and "not suspended after failures" in refused.text
        assert api.get(path).json()["metadata"]["annotations"]["forwarder.dev/resume"] == value
        assert refusals(operator.output()) == []
