"""Run now with other arguments: ``POST /schedules/{ns}/{name}/trigger`` with ``args`` (they
replace the spec's) and ``kwargs`` (merged over the spec's), in local mode (the YAML folder,
the real folder source, beat and worker) and in cluster mode (the run-now annotations on a
real resource, the real operator and worker). The run gets the arguments, and its record
keeps the override as asked (``GET /runs/{id}`` and the history show it). Bad bodies are 422.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
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
from support.processes import BIN, celery_worker, eventually, forwarder_env, running, start

Wait = Callable[..., dict[str, Any]]
SPEC = {
    "task": "forwarder.ping",
    "args": ["spec"],
    "kwargs": {"source": "spec", "keep": 1},
    "schedule": {"cron": "0 0 1 1 *"},
}


def scheduled(api: httpx.Client | TestClient, namespace: str, name: str) -> None:
    def check() -> bool:
        status = api.get(f"/schedules/{namespace}/{name}").json().get("status") or {}
        return any(c.get("reason") == "Scheduled" for c in status.get("conditions") or [])

    eventually(check, 60, 0.1, f"{namespace}/{name} Scheduled")


def test_trigger_with_overrides_in_local_mode(api: httpx.Client, wait_run: Wait) -> None:
    created = api.post("/schedules", json={"metadata": {"name": "overridden"}, "spec": SPEC})
    assert created.status_code == 201, created.text
    scheduled(api, "default", "overridden")

    body = {"args": ["asked", 2], "kwargs": {"source": "trigger", "extra": True}}
    response = api.post("/schedules/default/overridden/trigger", json=body)
    assert response.status_code == 202, response.text
    run = wait_run(response.json()["id"])
    assert run["state"] == "SUCCESS", run
    # The task got the override's args and the spec's kwargs with the override's merged over.
    assert run["result"]["args"] == ["asked", 2]
    assert run["result"]["kwargs"] == {"source": "trigger", "keep": 1, "extra": True}
    assert run["args"] == ["asked", 2]
    assert run["kwargs"] == {"source": "trigger", "keep": 1, "extra": True}
    assert run["overrides"] == body
    (listed,) = [
        r
        for r in api.get("/runs", params={"schedule": "default/overridden"}).json()["items"]
        if r["id"] == run["id"]
    ]
    assert listed["overrides"] == body

    # kwargs alone: the spec's args stay.
    only = api.post("/schedules/default/overridden/trigger", json={"kwargs": {"keep": 2}})
    assert only.status_code == 202, only.text
    run = wait_run(only.json()["id"])
    assert run["result"]["args"] == ["spec"]
    assert run["result"]["kwargs"] == {"source": "spec", "keep": 2}
    assert run["overrides"] == {"kwargs": {"keep": 2}}

    # No body, or an empty one: the spec's arguments, and no override recorded.
    for plain in (api.post("/schedules/default/overridden/trigger"), api.post(
        "/schedules/default/overridden/trigger", json={}
    )):  # fmt: skip
        assert plain.status_code == 202, plain.text
        run = wait_run(plain.json()["id"])
        assert run["result"]["args"] == ["spec"] and run["overrides"] is None

    # Bad bodies: 422, naming the field, and nothing runs.
    before = len(api.get("/runs", params={"schedule": "default/overridden"}).json()["items"])
    for bad, field in (
        ({"args": {"not": "a list"}}, "args"),
        ({"kwargs": ["not", "a", "mapping"]}, "kwargs"),
        ({"kwarg": {}}, "kwarg"),
    ):
        refused = api.post("/schedules/default/overridden/trigger", json=bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert field in refused.text
    after = len(api.get("/runs", params={"schedule": "default/overridden"}).json()["items"])
    assert after == before
    assert api.delete("/schedules/default/overridden").status_code == 204


def test_forwarder_trigger_command(api: httpx.Client, wait_run: Wait, stack: Any) -> None:
    created = api.post("/schedules", json={"metadata": {"name": "cli-trigger"}, "spec": SPEC})
    assert created.status_code == 201, created.text
    scheduled(api, "default", "cli-trigger")

    def forwarder_trigger(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "forwarder"), "trigger", *args, "--redis-url", stack.redis_url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    done = forwarder_trigger("default/cli-trigger", "--args", '["cli"]', "--kwargs", '{"n": 1}')
    assert done.returncode == 0 and done.stderr == "", done
    (line,) = done.stdout.splitlines()
    assert line.startswith("default/cli-trigger: run ") and line.endswith(" sent")
    run = wait_run(line.split()[2])
    assert run["state"] == "SUCCESS" and run["source"] == "trigger", run
    assert run["result"]["args"] == ["cli"]
    assert run["result"]["kwargs"] == {"source": "spec", "keep": 1, "n": 1}
    assert run["overrides"] == {"args": ["cli"], "kwargs": {"n": 1}}
    # No options: the spec's arguments, and no override recorded.
    plain = forwarder_trigger("default/cli-trigger")
    assert plain.returncode == 0, plain
    run = wait_run(plain.stdout.split()[2])
    assert run["result"]["args"] == ["spec"] and run["overrides"] is None

    for args, says in [
        (("default/cli-trigger", "--args", "[1,"), "--args is not JSON"),
        (("default/cli-trigger", "--args", '{"a": 1}'), "--args must be a JSON array"),
        (("default/cli-trigger", "--kwargs", "[1]"), "--kwargs must be a JSON object"),
        (("default/nothing-here",), "no schedule default/nothing-here in Redis"),
        (("cli-trigger",), "'cli-trigger' is not NAMESPACE/NAME"),
    ]:
        refused = forwarder_trigger(*args)
        assert (refused.returncode, refused.stdout) == (2, ""), (args, refused)
        (line,) = refused.stderr.splitlines()
        assert line.startswith("forwarder trigger: ") and says in line, (args, line)
    assert api.delete("/schedules/default/cli-trigger").status_code == 204


FAST = {"FORWARDER_OPERATOR_STATUS_INTERVAL": "0.3", "FORWARDER_OPERATOR_SWEEP_INTERVAL": "2"}
TOKEN = "overrides-token"


def cluster_api(redis_url: str, kubeconfig: Path) -> TestClient:
    """The api in cluster mode, as the chart's api ServiceAccount."""
    settings = ApiSettings(
        redis_url=redis_url,
        api_tokens=[SecretStr(TOKEN)],
        task_modules=["support.sample_tasks"],
        schedules_mode="kubernetes",
        kubeconfig=kubeconfig,
    )
    return TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.mark.cluster
def test_trigger_with_overrides_through_the_operator(
    redis_url: str,
    crds: ControlPlane,
    namespace: str,
    chart_release: Release,
    logs: Path,
) -> None:
    kubeconfig = chart_release.kubeconfig("operator")
    env = forwarder_env(redis_url, KUBECONFIG=str(kubeconfig), **FAST)
    operator = start([sys.executable, "-m", "forwarder_operator"], env, logs / "op.log", "operator")
    worker = celery_worker(env, logs / "worker.log")
    with running(operator, worker), cluster_api(redis_url, chart_release.kubeconfig("api")) as api:
        created = api.post(
            "/schedules", json={"metadata": {"name": "job", "namespace": namespace}, "spec": SPEC}
        )
        assert created.status_code == 201, created.text
        scheduled(api, namespace, "job")

        body = {"args": ["asked"], "kwargs": {"source": "trigger"}}
        triggered = api.post(f"/schedules/{namespace}/job/trigger", json=body)
        assert triggered.status_code == 202, triggered.text
        value = triggered.json()["runNow"]
        annotations = api.get(f"/schedules/{namespace}/job").json()["metadata"]["annotations"]
        assert annotations["forwarder.dev/run-now"] == value

        def runs() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = api.get(
                "/runs", params={"schedule": f"{namespace}/job", "state": "SUCCESS"}
            ).json()["items"]
            return items

        (run,) = eventually(runs, 60, 0.2, "the overridden run")
        assert run["source"] == "trigger"
        assert run["result"]["args"] == ["asked"]
        assert run["result"]["kwargs"] == {"source": "trigger", "keep": 1}
        assert run["overrides"] == body
        assert api.get(f"/runs/{run['id']}").json()["overrides"] == body

        # A plain trigger afterwards takes the spec's arguments: the overrides belonged to
        # the earlier value (the api removes them, and the operator ignores stale ones).
        plain = api.post(f"/schedules/{namespace}/job/trigger")
        assert plain.status_code == 202, plain.text
        annotations = api.get(f"/schedules/{namespace}/job").json()["metadata"]["annotations"]
        assert "forwarder.dev/run-now-overrides" not in annotations
        second = eventually(lambda: len(runs()) == 2 and runs()[0], 60, 0.2, "the plain run")
        assert second["result"]["args"] == ["spec"] and second["overrides"] is None

        refused = api.post(f"/schedules/{namespace}/job/trigger", json={"args": "x"})
        assert refused.status_code == 422
        assert refusals(operator.output()) == []
