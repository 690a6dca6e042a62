"""Retries and time limits per schedule, end to end in local mode: YAML files in the folder
(written by hand, or by the API), the real folder source, beat and a prefork worker.

A failed run is tried again with Celery's retry (the same run id), after ``backoff``
doubling; each ended attempt is on the run record (``GET /runs/{id}``: ``attempts``), and
``concurrencyPolicy: Forbid`` counts a run waiting for its retry as active. ``timeoutSeconds``
is each attempt's soft time limit, retried like any failure. A negative limit is refused at
every door: 422 at the API, the folder source's error line for a file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import yaml
from support.processes import eventually

Wait = Callable[..., dict[str, Any]]
NEVER = {"cron": "0 0 1 1 *"}  # fires only when triggered


def scheduled(api: httpx.Client, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/schedules/default/{name}").json()
        conditions = (body.get("status") or {}).get("conditions") or []
        return body if any(c["reason"] == "Scheduled" for c in conditions) else None

    result: dict[str, Any] = eventually(check, 30, 0.1, f"{name} Scheduled")
    return result


def test_a_failed_run_is_retried_and_every_attempt_is_on_its_record(
    stack: Any, api: httpx.Client, wait_run: Wait
) -> None:
    # A file written by hand, as `make up` users do.
    document = {
        "apiVersion": "forwarder.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": "flaky-report"},
        "spec": {
            "task": "tests.fail_first",
            "kwargs": {"failures": 2},
            "schedule": NEVER,
            "retries": {"limit": 3, "backoff": "1s", "maxBackoff": "2s"},
        },
    }
    (stack.schedules_dir / "flaky-report.yaml").write_text(yaml.safe_dump(document))
    scheduled(api, "flaky-report")
    started = time.time()
    triggered = api.post("/schedules/default/flaky-report/trigger")
    assert triggered.status_code == 202, triggered.text
    run_id = triggered.json()["id"]
    retrying = wait_run(run_id, {"RETRY"}, 30)
    assert retrying["next_attempt_at"] is not None
    assert retrying["attempts"][0]["attempt"] == 1
    run = wait_run(run_id)
    took = time.time() - started
    assert run["state"] == "SUCCESS", run
    assert run["result"] == {"attempt": 3}
    assert run["retries"] == 2
    attempts = run["attempts"]
    assert [(a["attempt"], a["state"]) for a in attempts] == [
        (1, "RETRY"),
        (2, "RETRY"),
        (3, "SUCCESS"),
    ]
    assert attempts[0]["error"] == "ValueError: attempt 1 failed"
    assert attempts[1]["error"] == "ValueError: attempt 2 failed"
    assert "error" not in attempts[2] or attempts[2]["error"] is None
    assert all(a["started_at"] and a["finished_at"] and a["worker"] for a in attempts)
    # Backoff 1s, then 2s (doubled, at the maxBackoff): about 3 s of waiting.
    assert 2.5 <= took < 20, took
    assert run["next_attempt_at"] is None

    # Out of retries: the last attempt's failure is the run's.
    api.patch(
        "/schedules/default/flaky-report",
        json={"spec": {"kwargs": {"failures": 5}, "retries": {"limit": 1, "backoff": 1}}},
    )
    # Ready=Scheduled again once the folder source has applied the edited file (until then
    # the API's view says Pending).
    scheduled(api, "flaky-report")
    failing = api.post("/schedules/default/flaky-report/trigger").json()["id"]
    run = wait_run(failing)
    assert run["state"] == "FAILURE"
    assert [(a["attempt"], a["state"]) for a in run["attempts"]] == [(1, "RETRY"), (2, "FAILURE")]
    assert run["attempts"][1]["error"] == "ValueError: attempt 2 failed"
    assert run["error"]["type"] == "ValueError"
    assert api.delete("/schedules/default/flaky-report").status_code == 204


def test_a_run_without_retries_is_not_retried(api: httpx.Client, wait_run: Wait) -> None:
    spec = {"task": "tests.fail_first", "schedule": NEVER}
    assert api.post("/schedules", json={"metadata": {"name": "once"}, "spec": spec}).is_success
    scheduled(api, "once")
    run = wait_run(api.post("/schedules/default/once/trigger").json()["id"])
    assert run["state"] == "FAILURE" and run["retries"] == 0 and run["attempts"] == []
    assert api.delete("/schedules/default/once").status_code == 204


def test_timeout_seconds_is_the_soft_limit_and_is_retried(
    api: httpx.Client, wait_run: Wait
) -> None:
    spec = {
        "task": "tests.sleep",
        "kwargs": {"seconds": 5},
        "schedule": NEVER,
        "timeoutSeconds": 1,
        "retries": {"limit": 1, "backoff": 1},
    }
    assert api.post("/schedules", json={"metadata": {"name": "slow"}, "spec": spec}).is_success
    scheduled(api, "slow")
    started = time.time()
    run = wait_run(api.post("/schedules/default/slow/trigger").json()["id"])
    assert run["state"] == "FAILURE", run
    assert run["error"]["type"] == "SoftTimeLimitExceeded"
    assert [(a["attempt"], a["state"]) for a in run["attempts"]] == [(1, "RETRY"), (2, "FAILURE")]
    assert all(a["error"].startswith("SoftTimeLimitExceeded") for a in run["attempts"])
    # Two attempts of 1 s and a 1 s backoff, not two of 5 s.
    assert time.time() - started < 8
    assert api.delete("/schedules/default/slow").status_code == 204


def test_forbid_counts_a_retrying_run_as_active(api: httpx.Client, wait_run: Wait) -> None:
    spec = {
        "task": "tests.fail_first",
        "kwargs": {"failures": 2},
        "schedule": {"every": "1s"},
        "concurrencyPolicy": "Forbid",
        "retries": {"limit": 2, "backoff": "2s", "maxBackoff": "2s"},
    }
    assert api.post("/schedules", json={"metadata": {"name": "guarded"}, "spec": spec}).is_success

    def runs() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = api.get(
            "/runs", params={"schedule": "default/guarded", "limit": 100}
        ).json()["items"]
        return items

    first = eventually(
        lambda: [r for r in runs() if r["state"] != "SKIPPED"], 30, 0.1, "the first run"
    )[-1]
    done = wait_run(first["id"], timeout=30)
    assert done["state"] == "SUCCESS" and len(done["attempts"]) == 3
    api.patch("/schedules/default/guarded", json={"spec": {"suspend": True}})
    # Every firing while it ran or waited for a retry (about 4 s) was skipped, naming it.
    skipped = [r for r in runs() if r["state"] == "SKIPPED"]
    naming = [r for r in skipped if first["id"] in (r["reason"] or "")]
    assert len(naming) >= 3, skipped
    finished = done["finished_at"]
    overlapping = [
        r
        for r in runs()
        if r["state"] != "SKIPPED" and r["id"] != first["id"] and r["created_at"] < finished
    ]
    assert overlapping == []
    assert api.delete("/schedules/default/guarded").status_code == 204


def test_a_negative_retry_limit_is_refused_at_each_door(stack: Any, api: httpx.Client) -> None:
    bad = {"task": "forwarder.ping", "schedule": NEVER, "retries": {"limit": -1}}
    response = api.post("/schedules", json={"metadata": {"name": "negative"}, "spec": bad})
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "spec.retries.limit: -1 is negative; give 0 (no retries) to 50"
    )
    assert not (stack.schedules_dir / "negative.yaml").exists()
    good = {"task": "forwarder.ping", "schedule": NEVER}
    assert api.post("/schedules", json={"metadata": {"name": "later"}, "spec": good}).is_success
    patched = api.patch("/schedules/default/later", json={"spec": {"retries": {"limit": -3}}})
    assert patched.status_code == 422 and "spec.retries.limit: -3 is negative" in patched.text
    timeout = api.patch("/schedules/default/later", json={"spec": {"timeoutSeconds": 0}})
    assert timeout.status_code == 422 and "spec.timeoutSeconds" in timeout.text

    # A file with the same mistake: the folder source names the file and the field, and the
    # API's view of it says Ready=False, InvalidSpec.
    document = {
        "apiVersion": "forwarder.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": "negative-file"},
        "spec": bad,
    }
    (stack.schedules_dir / "negative-file.yaml").write_text(yaml.safe_dump(document))
    eventually(
        lambda: (
            "negative-file.yaml: default/negative-file: InvalidSpec: spec.retries.limit: -1"
            in stack.procs["folder"].output()
        ),
        20,
        0.1,
        "the folder source's error line",
    )
    (condition,) = api.get("/schedules/default/negative-file").json()["status"]["conditions"]
    assert condition["status"] == "False" and condition["reason"] == "InvalidSpec"
    assert "spec.retries.limit: -1 is negative" in condition["message"]
    (stack.schedules_dir / "negative-file.yaml").unlink()
    assert api.delete("/schedules/default/later").status_code == 204


def test_replace_revokes_a_retrying_run(api: httpx.Client, wait_run: Wait) -> None:
    spec = {
        "task": "tests.fail_first",
        "kwargs": {"failures": 5},
        "schedule": {"every": "2s"},
        "concurrencyPolicy": "Replace",
        "retries": {"limit": 5, "backoff": "6s"},
    }
    assert api.post("/schedules", json={"metadata": {"name": "replaced"}, "spec": spec}).is_success

    def runs() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = api.get(
            "/runs", params={"schedule": "default/replaced", "limit": 100}
        ).json()["items"]
        return items

    # A run fails at once and waits 6 s for its retry; the next slot, 2 s on, replaces it (the
    # worker holding the retry drops it when it falls due). Under load a run can be replaced
    # while still queued, before it ever fails, so the first run that reached RETRY is the one
    # followed, not the first run.
    retrying = eventually(
        lambda: next((r for r in runs() if r["state"] == "RETRY"), None),
        30,
        0.1,
        "a run waiting for its retry",
    )
    revoked = wait_run(retrying["id"], timeout=20)
    api.patch("/schedules/default/replaced", json={"spec": {"suspend": True}})
    assert revoked["state"] == "REVOKED", revoked
    assert [(a["attempt"], a["state"]) for a in revoked["attempts"]] == [(1, "RETRY")]
    assert revoked["retries"] == 1  # the retry never ran
    # The run that replaced it came after it and before it was revoked (times to the ms).
    assert any(
        retrying["created_at"] < r["created_at"] <= revoked["finished_at"]
        for r in runs()
        if r["id"] != retrying["id"]
    )
    assert api.delete("/schedules/default/replaced").status_code == 204
