"""Flower down: the monitoring routes answer 503 with a message, and nothing else is affected.

A real stack (worker, Flower, API). Flower is killed with SIGKILL: ``/workers`` and
``/monitor/tasks`` turn 503 with a JSON message, while probes, task submission and its run
reaching SUCCESS, run history, schedules and metrics keep answering. Flower comes back on the
same port and the monitoring routes recover without restarting the API.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from support.api_process import api_env, client, start_api, start_flower
from support.processes import celery_worker, eventually, forwarder_env, free_port, running

MONITORING = ("/workers", "/monitor/tasks")


def _everything_else_works(api: httpx.Client) -> None:
    assert api.get("/healthz").status_code == 200
    assert api.get("/readyz").status_code == 200
    assert api.get("/tasks").status_code == 200
    assert api.get("/runs").status_code == 200
    assert api.get("/schedules").status_code == 200
    assert api.get("/metrics").status_code == 200
    reply = api.post("/tasks/forwarder.ping/runs", json={"kwargs": {"during": "flower down"}})
    assert reply.status_code == 202, reply.text
    run_id = reply.json()["id"]
    eventually(lambda: api.get(f"/runs/{run_id}").json()["state"] == "SUCCESS", 60, message="run")


@pytest.mark.slow
def test_flower_down_makes_only_monitoring_503(redis_url: str, logs: Path) -> None:
    flower_port, api_port = free_port(), free_port()
    env = api_env(forwarder_env(redis_url), flower_port=flower_port, logs=logs)
    worker = celery_worker(env, logs / "worker.log", concurrency=1)
    with running(worker):
        eventually(lambda: " ready." in worker.output(), 90, message="worker ready")
        flower = start_flower(env, logs / "flower.log", flower_port)
        api_proc = start_api(env, logs / "api.log", api_port)
        with running(flower, api_proc), client(api_port) as api:
            for path in MONITORING:
                eventually(lambda path=path: api.get(path).status_code == 200, 60, 0.5)

            flower.signal(signal.SIGKILL)
            flower.popen.wait(10)
            for path in MONITORING:
                reply = api.get(path)
                assert reply.status_code == 503, (path, reply.status_code, reply.text)
                assert "flower" in reply.text.lower(), reply.text
            _everything_else_works(api)

            # Flower back on the same port: monitoring recovers by itself.
            again = start_flower(env, logs / "flower-2.log", flower_port)
            with running(again):
                for path in MONITORING:
                    eventually(lambda path=path: api.get(path).status_code == 200, 60, 0.5)
                _everything_else_works(api)
            assert api_proc.alive()
