"""Redis restarted without persistence under the cluster-mode stack (the operator on the real
API server as its own ServiceAccount, worker, beat, api): every process reconnects by itself,
``/readyz`` goes 503 and back to 200, the operator restores every entry within its sweep
interval, and runs succeed again.

The api runs in cluster mode (``FORWARDER_SCHEDULES_MODE=kubernetes``) but makes no
Kubernetes call here, so it gets no kubeconfig: its ServiceAccount is tests/api's.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from forwarder_worker import Core, Settings
from support.api_process import api_env, client, start_api
from support.operator_process import operator_env, running_operator
from support.processes import celery_beat, celery_worker, eventually, free_port, running
from support.scheduled_tasks import ScheduledTasks
from support.valkey_process import valkey

SWEEP = 2.0
FAST = {
    "FORWARDER_OPERATOR_STATUS_INTERVAL": "0.5",
    "FORWARDER_OPERATOR_SWEEP_INTERVAL": str(SWEEP),
}


def _ready_status(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=3).status_code
    except httpx.HTTPError:
        return None


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_redis_restart_cluster_mode_operator_restores_entries(
    scheduled_tasks: ScheduledTasks,
    operator_kubeconfig: Path,
    tmp_path: Path,
    logs: Path,
) -> None:
    kube, namespace = scheduled_tasks, scheduled_tasks.namespace
    names = [f"tick-{i}" for i in range(5)]
    with valkey(tmp_path / "redis") as server:
        env = operator_env(server.url, operator_kubeconfig, [namespace], **FAST)
        api_port = free_port()
        environment = api_env(
            {k: v for k, v in env.items() if k != "KUBECONFIG"},
            flower_port=free_port(),
            logs=logs,
            FORWARDER_SCHEDULES_MODE="kubernetes",
        )
        worker = celery_worker(environment, logs / "worker.log")
        beat = celery_beat(environment, logs / "beat.log")
        core = Core.from_settings(Settings(redis_url=server.url))
        store, runs = core.store, core.runs
        with (
            running(worker, beat),
            running_operator(env, logs / "operator.log") as operator,
        ):
            api_proc = start_api(environment, logs / "api.log", api_port)
            with running(api_proc):
                for name in names:
                    kube.create(name, {"task": "forwarder.ping", "schedule": {"every": "1s"}})
                eventually(
                    lambda: all(runs.summary(f"{namespace}/{n}").succeeded >= 1 for n in names),
                    90,
                    message="runs before the restart",
                )
                assert _ready_status(api_port) == 200
                pids = [p.pid for p in (worker, beat, operator, api_proc)]

                server.kill()
                eventually(lambda: _ready_status(api_port) == 503, 30, 0.1, message="503")
                time.sleep(1.0)
                server.start()
                restarted = time.monotonic()
                eventually(lambda: _ready_status(api_port) == 200, 30, 0.1, message="200")
                eventually(
                    lambda: {f"{namespace}/{n}" for n in names} <= store.names(),
                    SWEEP + 30,
                    0.1,
                    message="entries restored by the sweep",
                )
                # One sweep interval after the operator notices Redis back; allow slack.
                assert time.monotonic() - restarted <= SWEEP + 30
                eventually(
                    lambda: all(runs.summary(f"{namespace}/{n}").succeeded >= 2 for n in names),
                    90,
                    message="runs after the restart",
                )
                assert [p.pid for p in (worker, beat, operator, api_proc)] == pids
                assert all(p.alive() for p in (worker, beat, operator, api_proc))
                with client(api_port) as api:
                    assert api.get("/runs").status_code == 200
        core.close()
