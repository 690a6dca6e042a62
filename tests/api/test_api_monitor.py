"""Flower-backed monitoring (/workers, /monitor/tasks) and the history export task, against
real Flower, worker and Redis processes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from forwarder_api.flower import RELEVANT_KEYS, format_tasks
from forwarder_worker import Core
from forwarder_worker.runs.history import HistorySettings, collect
from forwarder_worker.schedules.reconcile import validate
from forwarder_worker.settings import Settings
from support.processes import eventually

Wait = Callable[..., dict[str, Any]]


def test_format_tasks_groups_like_the_tutorial() -> None:
    tasks = {
        "u3": {
            "uuid": "u3",
            "name": "forwarder.ping",
            "received": 3.0,
            "state": "SUCCESS",
            "args": "[]",
            "worker": "w",
            "runtime": 0.1,
        },
        "u1": {
            "uuid": "u1",
            "name": "tests.collect_task_history",
            "received": 1.0,
            "state": "FAILURE",
            "exception": "x",
        },
        "u2": {"uuid": "u2", "name": "forwarder.ping", "received": 2.0, "state": "STARTED"},
        "u0": {"uuid": "u0", "name": "forwarder.ping", "received": None, "state": "PENDING"},
        "ux": {"uuid": "ux", "name": None, "received": 0.5},
    }
    assert format_tasks(tasks) == {
        "ping": {
            "1/u0": {"received": None, "state": "PENDING"},
            "2/u2": {"received": 2.0, "state": "STARTED"},
            "3/u3": {"received": 3.0, "state": "SUCCESS", "worker": "w", "runtime": 0.1},
        },
        "collect-task-history": {"1/u1": {"received": 1.0, "state": "FAILURE"}},
    }


def test_flower_is_behind_basic_auth(stack: Any) -> None:
    assert httpx.get(f"{stack.flower_url}/api/workers", timeout=10).status_code == 401


def test_workers_come_from_flower(stack: Any, api: httpx.Client) -> None:
    def listed() -> dict[str, Any] | None:
        workers: dict[str, Any] = api.get("/workers").json()
        return workers or None

    workers = eventually(listed, 60, 0.5, "Flower knows the worker")
    ((name, info),) = workers.items()
    assert name.startswith("worker-")
    assert "forwarder.ping" in info.get("registered", [])


def test_monitor_tasks_is_flowers_history_formatted(
    stack: Any, api: httpx.Client, wait_run: Wait
) -> None:
    ids = [api.post("/tasks/forwarder.ping/runs", json={}).json()["id"] for _ in range(2)]
    for run_id in ids:
        wait_run(run_id)

    def seen() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get("/monitor/tasks").json()
        keys = {key.split("/", 1)[1]: value for key, value in body.get("ping", {}).items()}
        done = all(keys.get(i, {}).get("state") == "SUCCESS" for i in ids)
        return body if done else None

    body = eventually(seen, 60, 0.5, "Flower saw both pings succeed")
    pings = body["ping"]
    numbers = [int(key.split("/", 1)[0]) for key in pings]
    assert numbers == list(range(1, len(pings) + 1))
    received = [value["received"] for value in pings.values()]
    assert received == sorted(received)
    for value in pings.values():
        assert set(value) <= set(RELEVANT_KEYS)
        assert {"state", "received", "worker"} <= set(value)
    raw = httpx.get(f"{stack.flower_url}/api/tasks", auth=stack.flower_auth, timeout=10).json()
    assert {k.split("/", 1)[1] for k in pings} <= set(raw)


def _lines(folder: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(folder.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def test_history_export_is_idempotent(stack: Any, api: httpx.Client, wait_run: Wait) -> None:
    ids = [api.post("/tasks/tests.fail/runs", json={}).json()["id"] for _ in range(2)]
    for run_id in ids:
        wait_run(run_id)

    def flower_saw_failures() -> bool:
        raw = httpx.get(f"{stack.flower_url}/api/tasks", auth=stack.flower_auth, timeout=10)
        return all(raw.json().get(i, {}).get("state") == "FAILURE" for i in ids)

    eventually(flower_saw_failures, 60, 0.5, "Flower saw the failures")
    target = stack.history_dir / "idempotent"
    first = api.post(
        "/tasks/forwarder.collect_task_history/runs", json={"kwargs": {"directory": "idempotent"}}
    ).json()["id"]
    report = wait_run(first)
    assert report["state"] == "SUCCESS", report
    result = report["result"]
    assert result["flower_error"] is None
    assert result["flower_tasks"] >= 2 and result["runs"] >= 2
    exported = _exported(target)
    assert {("flower", i) for i in ids} <= set(exported)
    assert {("run", i) for i in ids} <= set(exported)
    record = next(line for line in _lines(target) if line.get("id") == ids[0])
    assert record["state"] == "FAILURE" and record["error_type"] == "ValueError"

    # More passes (in-process, same Redis and Flower) add only what finished since, and
    # never a task twice.
    core = Core.from_settings(Settings(redis_url=stack.redis_url))
    settings = HistorySettings(
        flower_url=stack.flower_url,
        flower_user=stack.flower_auth[0],
        flower_password=stack.flower_auth[1],
    )
    collect(core.runs, settings, directory=target)
    settled = _exported(target)
    assert len(settled) == len(set(settled))
    assert ("run", first) in settled  # the first export's own run had finished by now
    collect(core.runs, settings, directory=target)
    final = _exported(target)
    assert len(final) == len(set(final))
    assert set(settled) <= set(final)
    core.close()


def _exported(folder: Path) -> list[tuple[str, str]]:
    return [
        ("flower", line["uuid"]) if "uuid" in line else ("run", line["id"])
        for line in _lines(folder)
    ]


def test_history_stays_inside_its_folder(api: httpx.Client, wait_run: Wait) -> None:
    for outside in ("/tmp", "../elsewhere"):
        run_id = api.post(
            "/tasks/forwarder.collect_task_history/runs", json={"kwargs": {"directory": outside}}
        ).json()["id"]
        run = wait_run(run_id)
        assert run["state"] == "FAILURE"
        assert run["error"]["message"].startswith(f"directory {outside!r} must be a relative")


def test_history_retention_removes_old_day_files(stack: Any, tmp_path: Path) -> None:
    core = Core.from_settings(Settings(redis_url=stack.redis_url))
    (tmp_path / "runs-2001-01-01.jsonl").write_text("{}\n")
    (tmp_path / "notes.jsonl").write_text("{}\n")
    settings = HistorySettings(flower_url="http://127.0.0.1:9")  # Flower away: runs still go
    report = collect(core.runs, settings, directory=tmp_path, retention_days=2)
    assert report["removed_files"] == ["runs-2001-01-01.jsonl"]
    assert report["flower_error"] and report["flower_tasks"] == 0
    assert (tmp_path / "notes.jsonl").exists()
    core.close()


def test_collect_history_sample_runs_every_five_minutes() -> None:
    sample = Path(__file__).resolve().parents[2] / "manifests/samples/collect-history.yaml"
    document = yaml.safe_load(sample.read_text())
    known = Core.from_settings(Settings()).registered_task_names()
    spec = validate(document["spec"], known)
    assert spec.task == "forwarder.collect_task_history"
    assert spec.schedule.every == 300
    assert spec.concurrency_policy == "Forbid"
