"""The fast paths answer ``POST /tasks/{name}/runs`` and ``GET /runs/{id}`` exactly as the
FastAPI routes do, and leave every request they do not handle exactly (auth, validation,
unknown runs or tasks) to the routes.

In-process app (TestClient) on a real Redis; run records written by the core's RunLog, and
submissions read back from the broker queue. An extra query parameter, which the routes
ignore, makes the fast paths step aside, so each answer is compared with the route's own.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from forwarder_api.fast_paths import _wait
from forwarder_api.main import create_app
from forwarder_api.settings import ApiSettings
from forwarder_worker.runs.records import RunLog

TOKEN = "fast-path-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    app = create_app(ApiSettings(redis_url=redis_url, api_tokens=[TOKEN], result_max_chars=64))
    with TestClient(app) as test_client:
        yield test_client


def _runs(client: TestClient) -> RunLog:
    """The app's own run log (its results are kept to 64 characters)."""
    app: Any = client.app
    runs: RunLog = app.state.services.core.runs
    return runs


def _same(client: TestClient, path: str, params: dict[str, Any] | None = None) -> Any:
    fast = client.get(path, params=params, headers=AUTH)
    route = client.get(path, params={**(params or {}), "via": "route"}, headers=AUTH)
    assert fast.status_code == route.status_code
    assert fast.content == route.content
    assert fast.headers["content-type"] == route.headers["content-type"]
    assert fast.headers["content-length"] == route.headers["content-length"]
    return fast


def test_answers_match_the_route_for_every_kind_of_run(
    client: TestClient, rclient: redis.Redis
) -> None:
    runs = _runs(client)
    runs.queued("pending", "forwarder.ping", source="api", args=[1, "a"], kwargs={"k": None})
    runs.queued("ok", "forwarder.ping", source="api")
    runs.transition("ok", "SUCCESS", result=json.dumps({"pong": True}), finished=1.5e9)
    runs.queued("failed", "forwarder.ping", source="api")
    runs.transition(
        "failed", "FAILURE", error_type="ValueError", error="nope", traceback="Traceback..."
    )
    for run_id, state in (("pending", "PENDING"), ("ok", "SUCCESS"), ("failed", "FAILURE")):
        answer = _same(client, f"/runs/{run_id}")
        assert answer.status_code == 200
        assert answer.json()["state"] == state
        # A long poll of an ended run answers at once, the same way.
        if state != "PENDING":
            assert _same(client, f"/runs/{run_id}", {"wait": 30}).json()["state"] == state
    assert _same(client, "/runs/ok").json()["result"] == {"pong": True}


def test_requests_it_does_not_handle_get_the_routes_answers(
    client: TestClient, rclient: redis.Redis
) -> None:
    _runs(client).queued("known", "forwarder.ping", source="api")
    assert client.get("/runs/known").status_code == 401
    assert client.get("/runs/known", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/runs/known", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    missing = client.get("/runs/never-submitted", headers=AUTH)
    assert missing.status_code == 404
    assert "never submitted" in missing.json()["detail"]
    for bad in ("99", "-1", "abc", "nan", "inf"):
        assert client.get("/runs/known", params={"wait": bad}, headers=AUTH).status_code == 422
    assert client.get(f"/runs/{'x' * 201}", headers=AUTH).status_code == 422


def test_a_truncated_result_is_fetched_whole_from_the_backend(
    client: TestClient, rclient: redis.Redis
) -> None:
    runs = _runs(client)
    big = {"data": "y" * 500}
    runs.queued("big", "forwarder.ping", source="api")
    runs.transition("big", "SUCCESS", result=json.dumps(big))
    # The result backend holds the whole value (as a worker would have stored it).
    app: Any = client.app
    app.state.services.core.app.backend.store_result("big", big, "SUCCESS")
    answer = client.get("/runs/big", headers=AUTH)
    assert answer.status_code == 200
    assert answer.json()["result"] == big
    assert answer.json()["result_truncated"] is False


def test_fast_answers_are_counted_under_the_route(client: TestClient, rclient: redis.Redis) -> None:
    _runs(client).queued("counted", "forwarder.ping", source="api")
    for _ in range(3):
        assert client.get("/runs/counted", headers=AUTH).status_code == 200
    text = client.get("/metrics").text
    match = re.search(
        r'^forwarder_api_requests_total\{method="GET",route="/runs/\{run_id\}",status="200"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    assert match and float(match.group(1)) == 3


@pytest.mark.parametrize(
    ("query", "seconds"),
    [(b"", 0.0), (b"wait=0", 0.0), (b"wait=30", 30.0), (b"wait=2.5", 2.5), (b"wait=55", 55.0)],
)
def test_plain_waits_are_parsed(query: bytes, seconds: float) -> None:
    assert _wait(query) == seconds


@pytest.mark.parametrize(
    "query", [b"wait=56", b"wait=abc", b"wait=1e1", b"wait=+1", b"wait=", b"wait=1&x=2", b"x=1"]
)
def test_any_other_query_is_left_to_the_route(query: bytes) -> None:
    assert _wait(query) is None


def _queued(rclient: redis.Redis, queue: str = "default") -> dict[str, dict[str, Any]]:
    """Messages waiting in a broker queue, by task id: headers and decoded body."""
    out = {}
    # A priority puts the message in the queue's list for that priority (kombu's suffix).
    keys = [k for k in rclient.keys(f"forwarder:{queue}*") if rclient.type(k) == "list"]
    for raw in (m for key in keys for m in rclient.lrange(key, 0, -1)):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        out[message["headers"]["id"]] = {"headers": message["headers"], "body": body}
    return out


def test_submissions_match_the_route(client: TestClient, rclient: redis.Redis) -> None:
    cases: list[dict[str, Any]] = [
        {},
        {"args": [1, 2], "kwargs": {"a": "b"}},
        {"queue": "reports", "priority": 3, "countdown": 5, "expires": 600},
    ]
    for body in cases:
        fast = client.post("/tasks/forwarder.ping/runs", json=body, headers=AUTH)
        route = client.post(
            "/tasks/forwarder.ping/runs", params={"via": "route"}, json=body, headers=AUTH
        )
        assert fast.status_code == route.status_code == 202
        fast_id, route_id = fast.json()["id"], route.json()["id"]
        assert fast.content.replace(fast_id.encode(), route_id.encode()) == route.content
        assert [k for k, _ in fast.headers.items()] == [k for k, _ in route.headers.items()]
        assert fast.headers["location"] == fast.json()["url"]
        assert fast.headers["location"].replace(fast_id, route_id) == route.headers["location"]
        # Both sent the same message, and recorded the same run.
        sent = _queued(rclient, body.get("queue", "default"))
        ours, theirs = sent[fast_id], sent[route_id]
        assert ours["body"] == theirs["body"]
        for header in ("task", "argsrepr", "kwargsrepr"):
            assert ours["headers"][header] == theirs["headers"][header]
        assert (ours["headers"]["eta"] is None) == (theirs["headers"]["eta"] is None)
        fast_run = client.get(f"/runs/{fast_id}", headers=AUTH).json()
        route_run = client.get(f"/runs/{route_id}", headers=AUTH).json()
        for field in ("task", "state", "source", "args", "kwargs"):
            assert fast_run[field] == route_run[field]
    # An empty body is a run with no arguments, as on the route.
    empty = client.post("/tasks/forwarder.ping/runs", headers=AUTH)
    assert empty.status_code == 202


def test_submissions_it_does_not_handle_get_the_routes_answers(
    client: TestClient, rclient: redis.Redis
) -> None:
    path = "/tasks/forwarder.ping/runs"
    assert client.post(path, json={}).status_code == 401
    assert client.post(path, json={}, headers={"Authorization": "Bearer no"}).status_code == 401
    # Invalid bodies: the route's 422 (or 400), after the token check.
    assert client.post(path, json={"args": "x"}, headers=AUTH).status_code == 422
    assert client.post(path, json={"unknown": 1}, headers=AUTH).status_code == 422
    assert (
        client.post(
            path, json={"countdown": 1, "eta": "2030-01-01T00:00:00Z"}, headers=AUTH
        ).status_code
        == 422
    )
    assert client.post(path, json=[1], headers=AUTH).status_code == 422
    broken = client.post(path, content=b"{", headers={**AUTH, "content-type": "application/json"})
    assert broken.status_code in (400, 422)
    assert client.post(path, json={"args": "x"}).status_code == 401  # no schema to strangers
    # Unknown and not allowed tasks: 404 from the same check as the route's.
    unknown = client.post("/tasks/forwarder.nope/runs", json={}, headers=AUTH)
    assert unknown.status_code == 404
    assert "not registered" in unknown.json()["detail"]
    hidden = client.post("/tasks/celery.backend_cleanup/runs", json={}, headers=AUTH)
    assert hidden.status_code == 404
    assert "allow-list" in hidden.json()["detail"]
    assert rclient.llen("forwarder:default") == 0


def test_submissions_are_counted_under_the_route(client: TestClient) -> None:
    for _ in range(2):
        assert client.post("/tasks/forwarder.ping/runs", json={}, headers=AUTH).status_code == 202
    text = client.get("/metrics").text
    assert re.search(
        r'^forwarder_api_requests_total\{method="POST",route="/tasks/\{name\}/runs",status="202"\} 2\.0$',
        text,
        re.MULTILINE,
    )
    assert re.search(
        r'^forwarder_api_runs_submitted_total\{task="forwarder.ping"\} 2\.0$', text, re.MULTILINE
    )
