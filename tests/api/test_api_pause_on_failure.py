"""Pause on failure in local mode, end to end: ``suspendAfterFailures: N`` failed runs in a
row stop the firings (a real beat, worker and folder source), the API's status says
Ready=False, SuspendedAfterFailures, with the counts, /metrics counts it, and it resumes with
``POST .../resume`` or a spec change (the file edited). Bad values are 422.
"""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any

import httpx
from support.processes import BIN, eventually

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
