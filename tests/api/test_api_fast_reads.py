"""The run-poll fast path answers ``GET /runs/{id}`` exactly as the FastAPI route does, and
leaves every request it does not handle exactly (auth, validation, unknown runs) to the route.

In-process app (TestClient) on a real Redis; run records written by the core's RunLog. An
extra query parameter, which the route ignores, makes the fast path step aside, so each
answer is compared with the route's own answer for the same run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from forwarder_api.fast_reads import _wait
from forwarder_api.main import create_app
from forwarder_api.settings import ApiSettings
from forwarder_worker.runs import RunLog

TOKEN = "fast-path-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    app = create_app(ApiSettings(redis_url=redis_url, api_tokens=[TOKEN], result_max_chars=64))
    with TestClient(app) as test_client:
        yield test_client


def _runs(rclient: redis.Redis, **options: Any) -> RunLog:
    return RunLog(rclient, "forwarder:", **options)


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
    runs = _runs(rclient)
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
    _runs(rclient).queued("known", "forwarder.ping", source="api")
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
    runs = _runs(rclient, result_limit=64)
    big = {"data": "y" * 500}
    runs.queued("big", "forwarder.ping", source="api")
    runs.transition("big", "SUCCESS", result=json.dumps(big))
    # The result backend holds the whole value (as a worker would have stored it).
    app: Any = client.app
    app.state.services.celery.backend.store_result("big", big, "SUCCESS")
    answer = client.get("/runs/big", headers=AUTH)
    assert answer.status_code == 200
    assert answer.json()["result"] == big
    assert answer.json()["result_truncated"] is False


def test_fast_answers_are_counted_under_the_route(client: TestClient, rclient: redis.Redis) -> None:
    _runs(rclient).queued("counted", "forwarder.ping", source="api")
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
