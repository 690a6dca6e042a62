"""The API never runs Celery's own ``celery.*`` tasks, nor tasks outside its allow-list, even
when a worker has them registered.

A real worker registers ``forwarder.*``, the test tasks (``tests.*``) and Celery's built-ins.
Two API processes: one whose allow-list names only ``forwarder.ping``, and one that allows
everything (``*``). Each refusal must be a 404, and nothing may reach the broker: no message in
the queue, no run record, no "Received task" line on the worker.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from forwarder_worker import Core
from support.api_process import api_env, client, start_api
from support.processes import celery_worker, eventually, forwarder_env, free_port, running

CELERY_TASKS = [
    "celery.backend_cleanup",
    "celery.chord_unlock",
    "celery.chord",
    "celery.group",
    "celery.chain",
    "celery.map",
    "celery.starmap",
    "celery.chunks",
    "celery.accumulate",
]


@pytest.mark.slow
def test_api_refuses_celery_and_unlisted_tasks(redis_url: str, core: Core, logs: Path) -> None:
    env = forwarder_env(redis_url)
    worker = celery_worker(env, logs / "worker.log", concurrency=1)
    narrow_port, wide_port = free_port(), free_port()
    flower_port = free_port()  # never started: not needed here
    with running(worker):
        eventually(lambda: " ready." in worker.output(), 90, message="worker ready")
        narrow = start_api(
            api_env(env, flower_port=flower_port, logs=logs, FORWARDER_API_TASKS="forwarder.ping"),
            logs / "api-narrow.log",
            narrow_port,
            "api-narrow",
        )
        wide = start_api(
            api_env(env, flower_port=flower_port, logs=logs, FORWARDER_API_TASKS="*,celery.*"),
            logs / "api-wide.log",
            wide_port,
            "api-wide",
        )
        with (
            running(narrow, wide),
            client(narrow_port) as api_narrow,
            client(wide_port) as api_wide,
        ):
            # The worker does have these registered.
            eventually(lambda: "tests.sleep" in worker.output() and "celery" in worker.output(), 10)
            listed = {t["name"] for t in api_wide.get("/tasks").json()["items"]}
            assert "tests.sleep" in listed and not any(n.startswith("celery.") for n in listed)
            assert {t["name"] for t in api_narrow.get("/tasks").json()["items"]} == {
                "forwarder.ping"
            }

            refused = [
                (api_narrow, "tests.sleep"),
                (api_narrow, "forwarder.http"),
                *[(api, name) for name in CELERY_TASKS for api in (api_narrow, api_wide)],
            ]
            for api, name in refused:
                reply = api.post(f"/tasks/{name}/runs", json={"args": [], "kwargs": {}})
                assert reply.status_code == 404, (name, reply.status_code, reply.text)
                assert "not submittable" in reply.json().get("detail", reply.text), reply.text
            # Allowed ones do run (the refusals are the allow-list, not a broken API).
            for api, name, kwargs in (
                (api_narrow, "forwarder.ping", {}),
                (api_wide, "tests.sleep", {"seconds": 0.1}),
            ):
                reply = api.post(f"/tasks/{name}/runs", json={"kwargs": kwargs})
                assert reply.status_code == 202, reply.text
                run_id = reply.json()["id"]
                eventually(
                    lambda run_id=run_id, api=api: (
                        api.get(f"/runs/{run_id}").json()["state"] == "SUCCESS"
                    ),
                    60,
                    message=f"{name} ran",
                )
            time.sleep(1.0)

    runs = core.runs
    ran = {r.task for r in runs.recent(limit=1000)}
    assert ran == {"forwarder.ping", "tests.sleep"}, ran
    assert not any("Received task: celery." in line for line in worker.output().splitlines())
