"""Auth, probes, limits, logs and metrics of an in-process app (TestClient, real Redis)."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from forwarder_api.main import create_app
from forwarder_api.settings import ApiSettings
from forwarder_worker import Core
from forwarder_worker.dispatch.metrics import SchedulerMetrics
from forwarder_worker.schedules.store import Entry

TOKEN = "in-process-token"
OPEN = {"/healthz", "/readyz", "/metrics"}


def settings(redis_url: str, **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "api_tokens": [TOKEN],
        "task_modules": ["support.sample_tasks"],
        "api_inspect_timeout": 0.2,
        "flower_url": f"http://127.0.0.1:{closed_port()}",
        **overrides,
    }
    return ApiSettings(**values)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def app_for(redis_url: str) -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(
            create_app(settings(overrides.pop("redis_url", redis_url), **overrides))
        )
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def protected_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every operation in the OpenAPI schema, with placeholders for path parameters."""
    routes = []
    for template, operations in client.get("/openapi.json").json()["paths"].items():
        if template not in OPEN:
            path = re.sub(r"\{[^}]+\}", "x", template)
            routes.extend((method.upper(), path) for method in operations)
    return routes


def test_every_protected_route_needs_a_valid_token(app_for: Any) -> None:
    client = app_for()
    routes = protected_routes(client)
    assert len(routes) >= 13  # tasks, runs, schedules, workers, monitor, logs
    for method, path in routes:
        missing = client.request(method, path)
        assert missing.status_code == 401, (method, path)
        assert missing.json()["detail"].startswith("missing bearer token")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = client.request(method, path, headers=auth("nope"))
        assert wrong.status_code == 401, (method, path)
        assert wrong.json() == {"detail": "invalid bearer token"}
        basic = client.request(method, path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert basic.status_code == 401, (method, path)
    assert client.get("/tasks", headers=auth()).status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"not json at all", "application/json"),
        (b'{"args": 5}', "application/json"),
        (b"a=b", "application/x-www-form-urlencoded"),
    ],
)
def test_a_bad_body_without_a_token_is_401_not_a_body_error(
    app_for: Any, body: bytes, content_type: str
) -> None:
    client = app_for()
    headers = {"Content-Type": content_type}
    anonymous = client.post("/tasks/forwarder.ping/runs", content=body, headers=headers)
    assert anonymous.status_code == 401
    assert anonymous.json()["detail"].startswith("missing bearer token")
    known = client.post("/tasks/forwarder.ping/runs", content=body, headers={**headers, **auth()})
    assert known.status_code in (400, 422)


def test_probes_are_open_and_readyz_follows_redis(app_for: Any) -> None:
    client = app_for()
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    down = app_for(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    assert down.get("/healthz").status_code == 200
    response = down.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"].startswith("Redis is unavailable")
    # A route that needs Redis says so too, instead of a 500.
    assert down.get("/runs", headers=auth()).status_code == 503


def test_no_configured_tokens_is_a_clear_401(app_for: Any) -> None:
    client = app_for(api_tokens=[])
    response = client.get("/tasks", headers=auth())
    assert response.status_code == 401
    assert "no API tokens are configured" in response.json()["detail"]


def test_token_file_is_reread_when_rotated(app_for: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("first-token\n\n")
    client = app_for(api_tokens=[], api_token_file=token_file)
    assert client.get("/runs", headers=auth("first-token")).status_code == 200
    token_file.write_text("second-token\n")
    later = time.time() + 5  # a distinct mtime even on coarse file systems
    os.utime(token_file, (later, later))
    assert client.get("/runs", headers=auth("first-token")).status_code == 401
    assert client.get("/runs", headers=auth("second-token")).status_code == 200


def test_allow_list_patterns_never_admit_celery_tasks(app_for: Any) -> None:
    client = app_for(api_tasks=["forwarder.p*", "celery.*", "*cleanup"])
    names = [t["name"] for t in client.get("/tasks", headers=auth()).json()["items"]]
    assert names == ["forwarder.ping"]
    assert client.post("/tasks/tests.sleep/runs", headers=auth(), json={}).status_code == 404
    response = client.post("/tasks/celery.backend_cleanup/runs", headers=auth(), json={})
    assert response.status_code == 404
    assert "allow-list" in response.json()["detail"]
    accepted = client.post("/tasks/forwarder.ping/runs", headers=auth(), json={})
    assert accepted.status_code == 202


def test_oversized_body_is_413_before_auth_and_parsing(app_for: Any) -> None:
    client = app_for(api_max_body_bytes=2048)
    body = b'{"args": ["' + b"x" * 4096 + b'"]}'
    response = client.post("/tasks/forwarder.ping/runs", headers=auth(), content=body)
    assert response.status_code == 413
    assert response.json() == {"detail": "request body is larger than the 2048-byte limit"}
    ok = client.post("/tasks/forwarder.ping/runs", headers=auth(), json={"args": ["small"]})
    assert ok.status_code == 202


def test_traceback_is_shown_only_when_configured(app_for: Any, core: Core) -> None:
    core.runs.transition(
        "failed-1",
        "FAILURE",
        task="tests.fail",
        error_type="ValueError",
        error="boom",
        traceback="Traceback (most recent call last): ...",
    )
    hidden = app_for().get("/runs/failed-1", headers=auth()).json()
    assert hidden["error"] == {"type": "ValueError", "message": "boom", "traceback": None}
    shown = app_for(api_show_traceback=True).get("/runs/failed-1", headers=auth()).json()
    assert shown["error"]["traceback"].startswith("Traceback")


def test_logs_tail_and_clear_404s(app_for: Any, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker.log").write_text("".join(f"line {i}\n" for i in range(100_000)))
    (logs / "beat.log").write_text("")
    client = app_for(logs_dir=logs)
    tail = client.get("/logs/worker", params={"lines": 3}, headers=auth()).json()
    assert tail == {"component": "worker", "lines": ["line 99997", "line 99998", "line 99999"]}
    assert client.get("/logs/beat", headers=auth()).json()["lines"] == []
    missing = client.get("/logs/api", headers=auth())
    assert missing.status_code == 404
    assert "(known: beat, worker)" in missing.json()["detail"]
    assert client.get("/logs/..%2Fsecret", headers=auth()).status_code in (404, 422)
    cluster = app_for().get("/logs/worker", headers=auth())
    assert cluster.status_code == 404
    assert "logs to stdout" in cluster.json()["detail"]


def test_monitoring_routes_are_503_when_flower_is_down(app_for: Any) -> None:
    client = app_for()
    for path in ("/workers", "/monitor/tasks"):
        response = client.get(path, headers=auth())
        assert response.status_code == 503
        assert response.json()["detail"].startswith("Flower is unreachable at http://127.0.0.1:")


def sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in metrics"
    return float(match.group(1))


def test_metrics(app_for: Any, core: Core) -> None:
    store = core.store
    every = Entry(name="default/a", task="forwarder.ping", schedule={"every": 60})
    store.upsert(every)
    store.upsert(
        Entry(name="default/b", task="forwarder.ping", schedule={"every": 60}, suspend=True)
    )
    # What beat adds after a batch: one firing per lateness, two skipped, one missed, four
    # excluded.
    figures = SchedulerMetrics.increments(
        fired=[0.001, 0.2, 100.0], skipped=2, missed=1, excluded=4
    )
    with core.client.pipeline() as pipe:
        core.metrics.add(pipe, figures)
        pipe.execute()

    client = app_for()
    client.post("/tasks/forwarder.ping/runs", headers=auth(), json={})
    client.get("/runs/nope", headers=auth())
    text = client.get("/metrics").text
    assert sample(text, "forwarder_api_runs_submitted_total", '{task="forwarder.ping"}') == 1
    assert (
        sample(
            text,
            "forwarder_api_requests_total",
            '{method="GET",route="/runs/{run_id}",status="404"}',
        )
        == 1
    )
    assert (
        sample(
            text,
            "forwarder_api_request_duration_seconds_count",
            '{method="POST",route="/tasks/{name}/runs"}',
        )
        == 1
    )
    assert sample(text, "forwarder_schedules", '{state="Scheduled"}') == 1
    assert sample(text, "forwarder_schedules", '{state="Suspended"}') == 1
    assert sample(text, "forwarder_scheduler_fired_total", "") == 3
    assert sample(text, "forwarder_scheduler_skipped_total", "") == 2
    assert sample(text, "forwarder_scheduler_missed_total", "") == 1
    assert sample(text, "forwarder_scheduler_excluded_total", "") == 4
    lateness = "forwarder_scheduler_lateness_seconds"
    assert sample(text, f"{lateness}_bucket", '{le="0.005"}') == 1
    assert sample(text, f"{lateness}_bucket", '{le="0.25"}') == 2
    assert sample(text, f"{lateness}_bucket", '{le="60.0"}') == 2
    assert sample(text, f"{lateness}_bucket", '{le="+Inf"}') == 3
    assert sample(text, f"{lateness}_count", "") == 3
    assert sample(text, "forwarder_api_redis_up", "") == 1

    protected = app_for(api_metrics_auth=True)
    assert protected.get("/metrics").status_code == 401
    assert protected.get("/metrics", headers=auth()).status_code == 200
