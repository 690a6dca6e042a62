"""Backfill through the API: ``POST /schedules/{ns}/{name}/backfill`` with ``{"start", "end"}``.

In local mode (the YAML folder, the real folder source, beat and worker) the API runs the
window's slots itself and answers what became of each: the slots before the schedule's first
firing run once, as source ``backfill`` with ``scheduled_at`` their slot; the slots beat
already ran are not run again, nor is anything when the same window is asked again. In
cluster mode (a real resource, the operator and a worker) it sets the
``forwarder.dev/backfill`` annotation and the operator runs them. Bad windows are 422 at
both, and nothing runs. ``forwarder backfill`` does the same from the command line, for a
schedule declared in a YAML file of the folder, with one line and a non-zero exit for a
refused window.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from forwarder_api.main import create_app
from forwarder_api.settings import ApiSettings
from forwarder_worker.dispatch.backfill import format_instant
from pydantic import SecretStr
from support.chart_release import Release
from support.controlplane import ControlPlane
from support.operator_process import refusals
from support.processes import BIN, celery_worker, eventually, forwarder_env, running, start

Wait = Callable[..., dict[str, Any]]
FAST = {"FORWARDER_OPERATOR_STATUS_INTERVAL": "0.3", "FORWARDER_OPERATOR_SWEEP_INTERVAL": "2"}
TOKEN = "backfill-token"

EVERY_2S = {"task": "forwarder.ping", "schedule": {"every": "2s"}}


def cluster_api(redis_url: str, kubeconfig: Path) -> TestClient:
    """The api in cluster mode, as the chart's api ServiceAccount."""
    settings = ApiSettings(
        redis_url=redis_url,
        api_tokens=[SecretStr(TOKEN)],
        schedules_mode="kubernetes",
        kubeconfig=kubeconfig,
    )
    return TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"})


def scheduled(api: httpx.Client | TestClient, namespace: str, name: str) -> None:
    def check() -> bool:
        status = api.get(f"/schedules/{namespace}/{name}").json().get("status") or {}
        return any(c.get("reason") == "Scheduled" for c in status.get("conditions") or [])

    eventually(check, 60, 0.1, f"{namespace}/{name} Scheduled")


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def schedule_runs(api: httpx.Client | TestClient, schedule: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(
        "/runs", params={"schedule": schedule, "limit": 100}
    ).json()["items"]
    return sorted(items, key=lambda r: r["scheduled_at"] or "")


def refused_windows(start: float, too_long: float) -> list[tuple[dict[str, Any], str]]:
    """Bad bodies for a schedule and what each 422 must say (``too_long``: seconds holding
    more than the cap's slots)."""
    now = time.time()
    return [
        ({"start": format_instant(start), "end": format_instant(now + 3600)}, "in the future"),
        ({"start": format_instant(start), "end": format_instant(start - 10)}, "end must be after"),
        ({"start": format_instant(now - too_long), "end": format_instant(now)}, "more than 100"),
        ({"start": "yesterday", "end": format_instant(now - 1)}, "start 'yesterday'"),
        ({"start": "2026-01-01T00:00:00", "end": format_instant(now - 1)}, "with a zone"),
        ({"start": format_instant(start)}, "end"),
        ({"start": format_instant(start), "end": format_instant(now), "x": 1}, "x"),
    ]


def test_backfill_in_local_mode(api: httpx.Client, wait_run: Wait) -> None:
    created = api.post("/schedules", json={"metadata": {"name": "backfilled"}, "spec": EVERY_2S})
    assert created.status_code == 201, created.text
    scheduled(api, "default", "backfilled")
    beats = eventually(
        lambda: (
            len(schedule_runs(api, "default/backfilled")) >= 2
            and schedule_runs(api, "default/backfilled")
        ),
        30,
        0.1,
        "two firings",
    )
    first, second = (epoch(r["scheduled_at"]) for r in beats[:2])  # to the ms (floored)
    # Three slots before the first firing, and the first two firings (beat ran those).
    start, end = first - 6, second + 1
    eventually(lambda: time.time() > end, 5, 0.05)
    body = {"start": format_instant(start), "end": format_instant(end)}
    response = api.post("/schedules/default/backfilled/backfill", json=body)
    assert response.status_code == 202, response.text
    done = response.json()
    assert done["slots"] == 5 and len(done["sent"]) == 3, done
    assert len(done["alreadyRun"]) == 2 and done["skipped"] == [] and done["backfill"] is None
    for sent in done["sent"]:
        run = wait_run(sent["id"])
        assert run["state"] == "SUCCESS", run
        assert run["source"] == "backfill"
        assert abs(epoch(run["scheduled_at"]) - epoch(sent["scheduledAt"])) < 0.001
        assert start <= epoch(sent["scheduledAt"]) < first
    assert sent["url"].endswith(f"/runs/{sent['id']}")

    again = api.post("/schedules/default/backfilled/backfill", json=body)
    assert again.status_code == 202, again.text
    assert again.json()["sent"] == [] and len(again.json()["alreadyRun"]) == 5
    backfilled = [r for r in schedule_runs(api, "default/backfilled") if r["source"] == "backfill"]
    assert len(backfilled) == 3

    for bad, says in refused_windows(start, 600):
        refused = api.post("/schedules/default/backfilled/backfill", json=bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert says in refused.text, (bad, refused.text)
    missing = api.post("/schedules/default/nothing-here/backfill", json=body)
    assert missing.status_code == 404, missing.text
    once = {"task": "forwarder.ping", "schedule": {"at": format_instant(time.time() + 3600)}}
    assert api.post("/schedules", json={"metadata": {"name": "bf-once"}, "spec": once}).is_success
    scheduled(api, "default", "bf-once")
    one_off = api.post("/schedules/default/bf-once/backfill", json=body)
    assert one_off.status_code == 422 and "one-off" in one_off.text, one_off.text
    assert (
        len([r for r in schedule_runs(api, "default/backfilled") if r["source"] == "backfill"]) == 3
    )
    assert api.delete("/schedules/default/backfilled").status_code == 204
    assert api.delete("/schedules/default/bf-once").status_code == 204


CLI_YAML = """\
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata: {name: cli-backfill}
spec:
  task: forwarder.ping
  schedule: {cron: "* * * * *"}
"""


def forwarder_backfill(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "forwarder"), "backfill", *args, "--redis-url", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_forwarder_backfill_command(api: httpx.Client, stack: Any) -> None:
    path = stack.schedules_dir / "cli-backfill.yaml"
    path.write_text(CLI_YAML)
    scheduled(api, "default", "cli-backfill")
    now = time.time()
    minute = now - now % 60
    start, end = format_instant(minute - 180), format_instant(minute)
    done = forwarder_backfill(
        stack.redis_url, "default/cli-backfill", "--start", start, "--end", end
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"backfill {start}/{end}: 3 slots, 3 sent, 0 already run"
    assert lines[1].split() == ["SCHEDULED", "AT", "RUN"]
    assert [line.split()[0] for line in lines[2:]] == [
        format_instant(minute - 180),
        format_instant(minute - 120),
        format_instant(minute - 60),
    ]

    def ran() -> list[dict[str, Any]]:
        return [
            r
            for r in schedule_runs(api, "default/cli-backfill")
            if r["source"] == "backfill" and r["state"] == "SUCCESS"
        ]

    runs = eventually(lambda: len(ran()) == 3 and ran(), 30, 0.1, "the backfilled runs")
    assert [r["id"] for r in runs] == [line.split()[1] for line in lines[2:]]

    again = forwarder_backfill(
        stack.redis_url, "default/cli-backfill", "--start", start, "--end", end
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].endswith("3 slots, 0 sent, 3 already run")

    future = format_instant(time.time() + 3600)
    for args, says in [
        (("default/cli-backfill", "--start", start, "--end", future), "ends in the future"),
        (("default/cli-backfill", "--start", "yesterday", "--end", end), "start 'yesterday'"),
        (("default/cli-backfill", "--start", end, "--end", start), "end must be after"),
        (
            ("default/cli-backfill", "--start", format_instant(minute - 7200), "--end", end),
            "more than 100 slots",
        ),
        (("default/nothing-here", "--start", start, "--end", end), "has no entry"),
        (("cli-backfill", "--start", start, "--end", end), "is not NAMESPACE/NAME"),
    ]:
        refused = forwarder_backfill(stack.redis_url, *args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert refused.stdout == ""
        (line,) = refused.stderr.splitlines()
        assert line.startswith("forwarder backfill: ") and says in line, (args, line)
    assert len(ran()) == 3
    path.unlink()


@pytest.mark.cluster
def test_backfill_through_the_operator(
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
    # A minute cron, suspended: no beat runs here, and the window's slots are whole minutes.
    spec = {"task": "forwarder.ping", "schedule": {"cron": "* * * * *"}, "suspend": True}
    with running(operator, worker), cluster_api(redis_url, chart_release.kubeconfig("api")) as api:
        created = api.post(
            "/schedules", json={"metadata": {"name": "job", "namespace": namespace}, "spec": spec}
        )
        assert created.status_code == 201, created.text
        eventually(
            lambda: any(
                c.get("type") == "Ready"
                for c in (api.get(f"/schedules/{namespace}/job").json().get("status") or {}).get(
                    "conditions"
                )
                or []
            ),
            60,
            0.1,
            "the resource reconciled",
        )
        now = time.time()
        end = now - now % 60  # the last whole minute: three slots in the window
        body = {"start": format_instant(end - 180), "end": format_instant(end)}
        asked = api.post(f"/schedules/{namespace}/job/backfill", json=body)
        assert asked.status_code == 202, asked.text
        value = asked.json()["backfill"]
        assert value == f"{body['start']}/{body['end']}" and asked.json()["slots"] == 3
        annotations = api.get(f"/schedules/{namespace}/job").json()["metadata"]["annotations"]
        assert annotations["forwarder.dev/backfill"] == value

        def done() -> list[dict[str, Any]]:
            return [
                r
                for r in schedule_runs(api, f"{namespace}/job")
                if r["source"] == "backfill" and r["state"] == "SUCCESS"
            ]

        runs = eventually(lambda: len(done()) == 3 and done(), 60, 0.2, "the backfilled runs")
        assert [epoch(r["scheduled_at"]) for r in runs] == [end - 180, end - 120, end - 60]

        for bad, says in refused_windows(end - 180, 7200):
            refused = api.post(f"/schedules/{namespace}/job/backfill", json=bad)
            assert refused.status_code == 422, (bad, refused.text)
            assert says in refused.text, (bad, refused.text)
        annotations = api.get(f"/schedules/{namespace}/job").json()["metadata"]["annotations"]
        assert annotations["forwarder.dev/backfill"] == value
        assert len(done()) == 3
        assert refusals(operator.output()) == []
