"""``GET /runs/{id}?wait=<seconds>``: the long poll, through the live API (real worker and Redis).

Each wait is far longer than the run, so a wait that answers before it ran out proves the
run's end woke it (a broken wake-up answers only when the wait runs out, and fails here).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

Wait = Callable[..., dict[str, Any]]
LONG = 50  # seconds: far longer than any run here, however slow the machine


def _timed_get(api: httpx.Client, run_id: str, wait: float) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = api.get(f"/runs/{run_id}", params={"wait": wait}, timeout=wait + 30)
    return response, time.monotonic() - began


def test_wait_answers_as_soon_as_the_run_ends(api: httpx.Client) -> None:
    run_id = api.post("/tasks/tests.sleep/runs", json={"kwargs": {"seconds": 1}}).json()["id"]
    response, took = _timed_get(api, run_id, LONG)
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["state"] == "SUCCESS"
    assert run["result"]["slept"] == 1
    assert run["finished_at"]
    assert took < LONG - 5, f"answered only when the wait ran out ({took:.1f} s)"


def test_wait_reports_a_failure_with_its_error(api: httpx.Client) -> None:
    run_id = api.post("/tasks/tests.fail/runs", json={"kwargs": {"message": "nope"}}).json()["id"]
    response, took = _timed_get(api, run_id, LONG)
    run = response.json()
    assert run["state"] == "FAILURE"
    assert run["error"]["type"] == "ValueError"
    assert run["error"]["message"] == "nope"
    assert took < LONG - 5


def test_wait_that_runs_out_answers_the_current_state(api: httpx.Client, wait_run: Wait) -> None:
    run_id = api.post("/tasks/tests.sleep/runs", json={"kwargs": {"seconds": 60}}).json()["id"]
    try:
        response, took = _timed_get(api, run_id, 1)
        assert response.status_code == 200
        assert response.json()["state"] in {"PENDING", "RECEIVED", "STARTED"}
        assert took >= 0.9
    finally:
        api.delete(f"/runs/{run_id}", params={"terminate": "true"})
        wait_run(run_id)


def test_many_waiters_on_one_run_and_on_several_all_wake(api: httpx.Client) -> None:
    ids = [
        api.post("/tasks/tests.sleep/runs", json={"kwargs": {"seconds": 1}}).json()["id"]
        for _ in range(2)
    ]
    answers: list[tuple[str, str, float]] = []
    lock = threading.Lock()

    def waiter(run_id: str) -> None:
        with httpx.Client(base_url=str(api.base_url), headers=api.headers) as own:
            response, took = _timed_get(own, run_id, LONG)
            with lock:
                answers.append((run_id, response.json()["state"], took))

    threads = [threading.Thread(target=waiter, args=(ids[i % 2],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LONG + 60)
    assert len(answers) == 6
    assert {state for _, state, _ in answers} == {"SUCCESS"}
    assert {run_id for run_id, _, _ in answers} == set(ids)
    assert max(took for _, _, took in answers) < LONG - 5


def test_wait_on_a_finished_run_answers_it(api: httpx.Client, wait_run: Wait) -> None:
    run_id = api.post("/tasks/forwarder.ping/runs", json={}).json()["id"]
    wait_run(run_id)
    response, took = _timed_get(api, run_id, LONG)
    assert response.json()["state"] == "SUCCESS"
    assert took < LONG - 5


def test_wait_is_bounded_and_checked(api: httpx.Client) -> None:
    run_id = api.post("/tasks/forwarder.ping/runs", json={}).json()["id"]
    for bad in ("-1", "56", "1000", "soon", "nan"):
        response = api.get(f"/runs/{run_id}", params={"wait": bad})
        assert response.status_code == 422, (bad, response.text)
    missing = api.get("/runs/00000000-0000-4000-8000-000000000000", params={"wait": 1})
    assert missing.status_code == 404
    anonymous = httpx.get(f"{api.base_url}/runs/{run_id}", params={"wait": 1})
    assert anonymous.status_code == 401


def test_wait_is_documented_in_openapi(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    params = spec["paths"]["/runs/{run_id}"]["get"]["parameters"]
    wait = next(p for p in params if p["name"] == "wait")
    assert wait["in"] == "query"
    assert wait["schema"]["maximum"] == 55
    assert "as soon as the run has ended" in wait["description"]
    assert "?wait=" in spec["info"]["description"]
