"""Schedules CRUD and trigger in local mode: the API edits YAML files, the real folder source
applies them, beat and the worker run them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from forwarder_api.main import create_app
from forwarder_api.settings import ApiSettings
from forwarder_worker.schedules.files import MAX_FILE_BYTES
from forwarder_worker.schedules.model import InvalidSpec
from forwarder_worker.schedules.reconcile import validate
from pydantic import SecretStr
from support.processes import eventually

Wait = Callable[..., dict[str, Any]]


def ready(api: httpx.Client, namespace: str, name: str, reason: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/schedules/{namespace}/{name}").json()
        (condition,) = body["status"]["conditions"]
        return body if condition["reason"] == reason else None

    result: dict[str, Any] = eventually(check, 30, 0.1, f"{namespace}/{name} {reason}")
    return result


def message_of(spec: dict[str, Any]) -> str:
    with pytest.raises(InvalidSpec) as caught:
        validate(spec, {"forwarder.ping"})
    return str(caught.value).split(" (known:")[0]


def test_create_get_patch_delete_through_files(stack: Any, api: httpx.Client) -> None:
    spec = {"task": "forwarder.ping", "schedule": {"cron": "0 3 * * *"}, "timeZone": "UTC"}
    created = api.post(
        "/schedules", json={"metadata": {"name": "nightly", "labels": {"team": "a"}}, "spec": spec}
    )
    assert created.status_code == 201, created.text
    assert created.json()["metadata"]["file"] == "nightly.yaml"
    document = yaml.safe_load((stack.schedules_dir / "nightly.yaml").read_text())
    assert document == {
        "apiVersion": "forwarder.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": "nightly", "namespace": "default", "labels": {"team": "a"}},
        "spec": spec,
    }
    assert not [p for p in stack.schedules_dir.iterdir() if p.name.startswith(".")]

    body = ready(api, "default", "nightly", "Scheduled")
    assert body["status"]["nextRunTime"].endswith("T03:00:00Z")
    # The schedule in words, as the operator's status has it.
    assert body["status"]["schedule"] == "cron 0 3 * * *"
    assert body["spec"] == spec
    names = [
        (s["metadata"]["namespace"], s["metadata"]["name"])
        for s in api.get("/schedules").json()["items"]
    ]
    assert ("default", "nightly") in names

    again = api.post("/schedules", json={"metadata": {"name": "nightly"}, "spec": spec})
    assert again.status_code == 409
    assert "already exists (in nightly.yaml)" in again.json()["detail"]

    patched = api.patch("/schedules/default/nightly", json={"spec": {"suspend": True}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["spec"]["suspend"] is True
    assert yaml.safe_load((stack.schedules_dir / "nightly.yaml").read_text())["spec"]["suspend"]
    ready(api, "default", "nightly", "Suspended")
    removed = api.patch("/schedules/default/nightly", json={"spec": {"suspend": None}})
    assert "suspend" not in removed.json()["spec"]
    ready(api, "default", "nightly", "Scheduled")

    assert api.delete("/schedules/default/nightly").status_code == 204
    assert not (stack.schedules_dir / "nightly.yaml").exists()
    assert api.get("/schedules/default/nightly").status_code == 404
    assert api.delete("/schedules/default/nightly").status_code == 404
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    eventually(lambda: not client.exists("forwarder:default/nightly"), 30, 0.1, "entry removed")


def test_other_namespaces_get_namespaced_file_names(stack: Any, api: httpx.Client) -> None:
    spec = {"task": "forwarder.ping", "schedule": {"every": "1h"}, "suspend": True}
    created = api.post(
        "/schedules", json={"metadata": {"name": "hourly", "namespace": "mlops"}, "spec": spec}
    )
    assert created.status_code == 201, created.text
    assert (stack.schedules_dir / "mlops.hourly.yaml").is_file()
    listed = api.get("/schedules", params={"namespace": "mlops"}).json()["items"]
    assert [s["metadata"]["name"] for s in listed] == ["hourly"]
    assert api.get("/schedules/default/hourly").status_code == 404
    assert api.delete("/schedules/mlops/hourly").status_code == 204


@pytest.mark.parametrize(
    "spec",
    [
        {"task": "forwarder.ping", "schedule": {"cron": "61 * * * *"}},
        {"task": "forwarder.ping", "schedule": {"every": "5m", "cron": "* * * * *"}},
        {"task": "forwarder.ping", "schedule": {"every": "1m"}, "timeZone": "Mars/Olympus"},
        {"task": "forwarder.ping", "schedule": {"every": "1m"}, "priority": 12},
        {"task": "forwarder.ping", "schedule": {"every": "1m"}, "suspended": True},
        {"task": "no.such.task", "schedule": {"every": "1m"}},
    ],
)
def test_invalid_specs_get_422_with_the_operators_message(
    stack: Any, api: httpx.Client, spec: dict[str, Any]
) -> None:
    response = api.post("/schedules", json={"metadata": {"name": "bad"}, "spec": spec})
    assert response.status_code == 422
    assert response.json()["detail"].startswith(message_of(spec))
    assert not (stack.schedules_dir / "bad.yaml").exists()


def test_invalid_patch_is_422_and_leaves_the_file(stack: Any, api: httpx.Client) -> None:
    spec = {"task": "forwarder.ping", "schedule": {"cron": "@yearly"}}
    assert (
        api.post("/schedules", json={"metadata": {"name": "keep"}, "spec": spec}).status_code == 201
    )
    before = (stack.schedules_dir / "keep.yaml").read_text()
    response = api.patch(
        "/schedules/default/keep",
        json={"spec": {"schedule": {"cron": "61 * * * *", "every": None}}},
    )
    assert response.status_code == 422
    assert (
        response.json()["detail"]
        == "spec.schedule.cron: '61 * * * *' is not a valid cron expression"
    )
    assert (stack.schedules_dir / "keep.yaml").read_text() == before
    assert api.delete("/schedules/default/keep").status_code == 204


def test_bad_names_are_422(api: httpx.Client) -> None:
    spec = {"task": "forwarder.ping", "schedule": {"every": 60}}
    assert (
        api.post("/schedules", json={"metadata": {"name": "Bad_Name"}, "spec": spec}).status_code
        == 422
    )
    response = api.get("/schedules/Bad_NS/x")
    assert response.status_code == 422
    assert "DNS-1123" in response.json()["detail"]


def test_trigger_runs_the_task_now_and_runs_filter_by_schedule(
    api: httpx.Client, wait_run: Wait
) -> None:
    spec = {
        "task": "forwarder.ping",
        "kwargs": {"from": "trigger"},
        "schedule": {"cron": "0 0 1 1 *"},
    }
    assert (
        api.post("/schedules", json={"metadata": {"name": "manual"}, "spec": spec}).status_code
        == 201
    )
    ready(api, "default", "manual", "Scheduled")
    response = api.post("/schedules/default/manual/trigger")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["url"].endswith(f"/runs/{body['id']}") and body["runNow"] is None
    run = wait_run(body["id"])
    assert run["state"] == "SUCCESS"
    assert run["source"] == "trigger"
    assert run["schedule"] == "default/manual"
    assert run["result"]["kwargs"] == {"from": "trigger"}

    runs = api.get("/runs", params={"schedule": "default/manual"}).json()["items"]
    assert [r["id"] for r in runs] == [body["id"]]
    eventually(
        lambda: api.get("/schedules/default/manual").json()["status"]["lastRun"], 10, 0.1, "lastRun"
    )
    status = api.get("/schedules/default/manual").json()["status"]
    assert status["lastRun"]["taskId"] == body["id"]
    assert status["lastRun"]["state"] == "SUCCESS"
    assert status["totalRunCount"] == 1
    assert api.post("/schedules/default/nope/trigger").status_code == 404
    assert api.delete("/schedules/default/manual").status_code == 204


def test_beat_fires_a_schedule_created_through_the_api(api: httpx.Client, wait_run: Wait) -> None:
    spec = {"task": "forwarder.ping", "schedule": {"every": "1s"}}
    assert (
        api.post("/schedules", json={"metadata": {"name": "fast"}, "spec": spec}).status_code == 201
    )

    def fired() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = api.get(
            "/runs", params={"schedule": "default/fast", "state": "SUCCESS"}
        ).json()["items"]
        return items

    runs = eventually(fired, 30, 0.2, "a firing of default/fast")
    assert runs[0]["source"] == "schedule" and runs[0]["scheduled_at"]
    assert api.delete("/schedules/default/fast").status_code == 204


def test_files_the_folder_source_refuses_are_not_served(stack: Any, api: httpx.Client) -> None:
    # One reader of the folder for both: a file over the size limit, or not UTF-8, is
    # neither applied by the folder source nor listed (nor editable) here.
    document = "apiVersion: forwarder.dev/v1alpha1\nkind: ScheduledTask\nmetadata:\n  name: {}\n"
    spec = "spec:\n  task: forwarder.ping\n  schedule:\n    every: 1h\n"
    huge = document.format("huge") + spec + "#" * (MAX_FILE_BYTES + 1) + "\n"
    (stack.schedules_dir / "huge.yaml").write_text(huge)
    latin = (document.format("latin") + spec + "# caf\xe9\n").encode("latin-1")
    (stack.schedules_dir / "latin.yaml").write_bytes(latin)
    try:
        names = {s["metadata"]["name"] for s in api.get("/schedules").json()["items"]}
        assert not names & {"huge", "latin"}
        assert api.get("/schedules/default/huge").status_code == 404
        assert api.get("/schedules/default/latin").status_code == 404
    finally:
        (stack.schedules_dir / "huge.yaml").unlink()
        (stack.schedules_dir / "latin.yaml").unlink()


def test_a_folder_the_api_cannot_write_is_503_with_the_reason(
    redis_url: str, tmp_path: Path
) -> None:
    """Tests run as root, whom permissions do not stop, so the folder is a regular file: the
    same OSError path a read-only mount or a folder owned by another user takes."""
    folder = tmp_path / "schedules"
    folder.write_text("not a folder\n")
    settings = ApiSettings(redis_url=redis_url, api_tokens=[SecretStr("t")], schedules_dir=folder)
    with TestClient(create_app(settings), headers={"Authorization": "Bearer t"}) as api:
        spec = {"task": "forwarder.ping", "schedule": {"every": "1h"}}
        reply = api.post("/schedules", json={"metadata": {"name": "hourly"}, "spec": spec})
        assert reply.status_code == 503, reply.text
        assert f"cannot write the schedules folder {folder}" in reply.json()["detail"]
        assert "the api needs write access" in reply.json()["detail"]
    assert folder.read_text() == "not a folder\n"
