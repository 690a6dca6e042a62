"""Submitting, following and revoking runs through the live API (real worker and Redis)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from support.processes import eventually

Wait = Callable[..., dict[str, Any]]


def test_tasks_lists_what_workers_registered_and_the_allow_list_admits(api: httpx.Client) -> None:
    def listed() -> dict[str, list[str]] | None:
        items = {t["name"]: t["workers"] for t in api.get("/tasks").json()["items"]}
        return items if items.get("forwarder.ping") else None

    tasks = eventually(listed, 30, 0.5, "workers report forwarder.ping")
    assert {"forwarder.ping", "forwarder.http", "forwarder.collect_task_history"} <= set(tasks)
    # The default allow-list admits the configured task modules (support.sample_tasks).
    assert {"tests.sleep", "tests.fail"} <= set(tasks)
    assert not [name for name in tasks if name.startswith("celery.")]


def test_submit_then_result_round_trip(api: httpx.Client, wait_run: Wait) -> None:
    response = api.post(
        "/tasks/forwarder.ping/runs", json={"args": [1, "two"], "kwargs": {"k": "v"}}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"id", "url"}
    assert body["url"].endswith(f"/runs/{body['id']}")
    assert response.headers["location"] == body["url"]
    # Recorded before it was sent: known at once, never a 404.
    assert api.get(body["url"]).status_code == 200

    run = wait_run(body["id"])
    assert run["state"] == "SUCCESS"
    assert run["task"] == "forwarder.ping"
    assert run["source"] == "api"
    assert run["result"]["pong"] is True
    assert run["result"]["args"] == [1, "two"]
    assert run["result"]["kwargs"] == {"k": "v"}
    assert run["args"] == [1, "two"]
    assert run["error"] is None
    assert run["created_at"] and run["started_at"] and run["finished_at"]


def test_failed_run_has_error_but_no_traceback_by_default(
    api: httpx.Client, wait_run: Wait
) -> None:
    run_id = api.post("/tasks/tests.fail/runs", json={"kwargs": {"message": "no luck"}}).json()[
        "id"
    ]
    run = wait_run(run_id)
    assert run["state"] == "FAILURE"
    assert run["error"] == {"type": "ValueError", "message": "no luck", "traceback": None}


def test_unknown_id_is_404_not_pending(api: httpx.Client) -> None:
    response = api.get("/runs/00000000-0000-4000-8000-000000000000")
    assert response.status_code == 404
    assert "never submitted" in response.json()["detail"]
    assert api.delete("/runs/00000000-0000-4000-8000-000000000000").status_code == 404


def test_revoke_with_terminate_stops_a_running_task(api: httpx.Client, wait_run: Wait) -> None:
    run_id = api.post("/tasks/tests.sleep/runs", json={"kwargs": {"seconds": 60}}).json()["id"]
    wait_run(run_id, {"STARTED"})
    response = api.delete(f"/runs/{run_id}", params={"terminate": "true"})
    assert response.status_code == 202, response.text
    assert response.json() == {"id": run_id, "terminate": True, "state": "STARTED"}
    run = wait_run(run_id, timeout=30)
    assert run["state"] == "REVOKED"
    assert run["reason"] == "terminated"
    again = api.delete(f"/runs/{run_id}")
    assert again.status_code == 409
    assert "already finished (REVOKED)" in again.json()["detail"]


def test_not_allowed_unknown_and_internal_tasks_are_404(api: httpx.Client) -> None:
    for name in ("celery.backend_cleanup", "celery.chord_unlock", "no.such.task"):
        response = api.post(f"/tasks/{name}/runs", json={})
        assert response.status_code == 404, name
        assert name in response.json()["detail"]


def test_bad_bodies_are_422(api: httpx.Client) -> None:
    for body in (
        {"args": "not-a-list"},
        {"kwargs": [1]},
        {"priority": 10},
        {"countdown": -1},
        {"countdown": 1, "eta": "2030-01-01T00:00:00Z"},
        {"eta": "2030-01-01T00:00:00"},  # no zone
        {"unknown": 1},
        {"queue": "bad queue"},
    ):
        response = api.post("/tasks/forwarder.ping/runs", json=body)
        assert response.status_code == 422, (body, response.text)
    response = api.post(
        "/tasks/forwarder.ping/runs",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422


def test_oversized_body_is_413(api: httpx.Client) -> None:
    big = {"args": ["x" * (1024 * 1024)]}
    response = api.post("/tasks/forwarder.ping/runs", json=big)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]

    def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 32768

    streamed = api.post("/tasks/forwarder.ping/runs", content=chunks())
    assert streamed.status_code == 413


def test_runs_filters_and_pagination(api: httpx.Client, wait_run: Wait) -> None:
    ids = [api.post("/tasks/tests.fail/runs", json={}).json()["id"] for _ in range(2)]
    ids.append(api.post("/tasks/forwarder.ping/runs", json={"kwargs": {"f": 1}}).json()["id"])
    for run_id in ids:
        wait_run(run_id)

    failed = api.get("/runs", params={"task": "tests.fail", "limit": 500}).json()["items"]
    assert {r["task"] for r in failed} == {"tests.fail"}
    assert set(ids[:2]) <= {r["id"] for r in failed}

    by_state = api.get("/runs", params={"state": "FAILURE", "limit": 500}).json()["items"]
    assert {r["state"] for r in by_state} == {"FAILURE"}
    assert ids[2] not in {r["id"] for r in by_state}

    combined = api.get("/runs", params={"task": "forwarder.ping", "state": "SUCCESS"}).json()
    assert ids[2] in {r["id"] for r in combined["items"]}

    first = api.get("/runs", params={"task": "tests.fail", "limit": 1}).json()
    assert len(first["items"]) == 1 and first["next"]
    second = api.get(first["next"]).json()
    assert second["offset"] == 1
    assert second["items"][0]["id"] != first["items"][0]["id"]
    # Newest first.
    assert first["items"][0]["created_at"] >= second["items"][0]["created_at"]

    assert api.get("/runs", params={"state": "NOPE"}).status_code == 422
    assert api.get("/runs", params={"limit": 0}).status_code == 422
