"""Every Forwarder component started through the ``forwarder`` command against one Redis,
and checked end to end: for the suites that change how Redis is reached (a password, TLS),
where each component must connect with the same settings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
from forwarder_worker import Core

from support.api_process import api_ready, flower_sees_worker
from support.processes import BIN, eventually, free_port, running, start

API_TOKEN = "t0ken-for-tests"
FLOWER_AUTH = ("admin", "pw")


def forwarder(*args: str) -> list[str]:
    """The ``forwarder`` command with ``args``."""
    return [str(BIN / "forwarder"), *args]


def check_every_component(
    env: dict[str, str], core: Core, folder: Path, logs: Path, *, schedule: str, worker: str
) -> None:
    """Start ``forwarder worker``, ``beat``, ``flower`` and ``api`` and the folder source
    with ``env`` (which sets FLOWER_BASIC_AUTH to :data:`FLOWER_AUTH`), the folder holding
    an ``every: 1s`` schedule named ``schedule``, and check that each works: the schedule
    succeeds, ``forwarder status`` lists it, Flower sees the worker (named ``worker@...``),
    the api is ready, runs a submission to SUCCESS and lists the runs. Stops them all."""
    flower_port, api_port = free_port(), free_port()
    procs = (
        start(
            forwarder(
                "worker",
                "--concurrency=1",
                "--without-gossip",
                "--without-mingle",
                "-n",
                f"{worker}@%h",
            ),
            env,
            logs / "worker.log",
            "worker",
        ),
        start(forwarder("beat"), env, logs / "beat.log", "beat"),
        start(
            [str(BIN / "python"), "-m", "forwarder_operator.folder", "--dir", str(folder)],
            env,
            logs / "folder.log",
            "folder",
        ),
        start(
            forwarder("flower", "--address=127.0.0.1", f"--port={flower_port}"),
            env,
            logs / "flower.log",
            "flower",
        ),
        start(
            forwarder("api", "--host", "127.0.0.1", "--port", str(api_port)),
            {**env, "FORWARDER_API_TOKENS": API_TOKEN, "FORWARDER_SCHEDULES_DIR": str(folder)},
            logs / "api.log",
            "api",
        ),
    )
    runs = core.runs
    with running(*procs):
        eventually(lambda: runs.summary(schedule).succeeded >= 2, 120, message="runs")
        status = subprocess.run(
            forwarder("status"), env=env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert schedule in status.stdout
        eventually(
            lambda: flower_sees_worker(flower_port, FLOWER_AUTH, f"{worker}@"),
            90,
            1.0,
            message="Flower seeing the worker",
        )
        eventually(lambda: api_ready(api_port), 90, 0.5, message="the API ready (it reaches Redis)")
        with httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=10,
        ) as http:
            submitted = http.post("/tasks/forwarder.ping/runs", json={})
            assert submitted.status_code == 202, submitted.text
            run_id = submitted.json()["id"]
            eventually(
                lambda: (record := runs.get(run_id)) is not None and record.state == "SUCCESS",
                60,
                0.2,
                message="a run submitted through the API",
            )
            listed = http.get("/runs")
            assert listed.status_code == 200 and listed.json()["items"], listed.text
