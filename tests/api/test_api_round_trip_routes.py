"""The interactive round trip's routes, ``POST /tasks/{name}/runs`` and ``GET /runs/{id}``
(``?wait=`` too): their answers as they were, byte for byte; their error answers; and what
their lean binding (:class:`~forwarder_api.deps.LeanRoute`) leaves to FastAPI.

In-process app (TestClient) on a real Redis; run records written straight into their hashes
(fixed times, so the answers are fixed bytes), and submissions read back from the broker
queue. The expected bytes and ``openapi_round_trip.json`` were taken from the API before the
routes bound their own arguments, when an ASGI middleware (``fast_paths``, since removed)
answered these requests beside them and both answered alike.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
import redis
from fastapi.testclient import TestClient
from forwarder_api.deps import get_settings
from forwarder_api.main import create_app
from forwarder_api.settings import ApiSettings

TOKEN = "round-trip-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SUBMIT = "/tasks/forwarder.ping/runs"
CREATED = {"created": "1500000000.25"}
RECORDS: dict[str, dict[str, str]] = {
    "pending": {"state": "PENDING", "args": '[1, "a"]', "kwargs": '{"k": null}'},
    "ok": {
        "state": "SUCCESS",
        "result": '{"pong": true}',
        "received": "1500000001",
        "started": "1500000001.5",
        "finished": "1500000002",
        "worker": "w@h",
    },
    "failed": {
        "state": "FAILURE",
        "error_type": "ValueError",
        "error": "nope",
        "traceback": "Traceback...",
        "finished": "1500000002",
        "retries": "2",
    },
    "unicode": {"state": "SUCCESS", "result": '"h\u00e9llo \\u2603"', "args": "[1.5, 1e300, -0]"},
}
ANSWERS = {
    "pending": b'{"id":"pending","task":"forwarder.ping","state":"PENDING","schedule":null,'
    b'"source":"api","worker":null,"retries":0,"attempts":[],"next_attempt_at":null,"reason":null,"args":[1,"a"],"kwargs":{"k":null},'
    b'"overrides":null,"result":null,"result_truncated":false,"error":null,"scheduled_at":null,'
    b'"created_at":"2017-07-14T02:40:00.250Z","received_at":null,"started_at":null,'
    b'"finished_at":null}',
    "ok": b'{"id":"ok","task":"forwarder.ping","state":"SUCCESS","schedule":null,"source":"api",'
    b'"worker":"w@h","retries":0,"attempts":[],"next_attempt_at":null,"reason":null,"args":null,"kwargs":null,"overrides":null,'
    b'"result":{"pong":true},'
    b'"result_truncated":false,"error":null,"scheduled_at":null,'
    b'"created_at":"2017-07-14T02:40:00.250Z","received_at":"2017-07-14T02:40:01.000Z",'
    b'"started_at":"2017-07-14T02:40:01.500Z","finished_at":"2017-07-14T02:40:02.000Z"}',
    "failed": b'{"id":"failed","task":"forwarder.ping","state":"FAILURE","schedule":null,'
    b'"source":"api","worker":null,"retries":2,"attempts":[],"next_attempt_at":null,"reason":null,"args":null,"kwargs":null,'
    b'"overrides":null,"result":null,"result_truncated":false,'
    b'"error":{"type":"ValueError","message":"nope","traceback":null},"scheduled_at":null,'
    b'"created_at":"2017-07-14T02:40:00.250Z","received_at":null,"started_at":null,'
    b'"finished_at":"2017-07-14T02:40:02.000Z"}',
    "unicode": '{"id":"unicode","task":"forwarder.ping","state":"SUCCESS","schedule":null,'
    '"source":"api","worker":null,"retries":0,"attempts":[],"next_attempt_at":null,"reason":null,"args":[1.5,1e+300,0],"kwargs":null,'
    '"overrides":null,"result":"h\u00e9llo \u2603","result_truncated":false,"error":null,"scheduled_at":null,'
    '"created_at":"2017-07-14T02:40:00.250Z","received_at":null,"started_at":null,'
    '"finished_at":null}'.encode(),
}


@pytest.fixture
def client(redis_url: str, rclient: redis.Redis) -> Iterator[TestClient]:
    for run_id, fields in RECORDS.items():
        record = {"id": run_id, "task": "forwarder.ping", "source": "api", **CREATED, **fields}
        rclient.hset(f"forwarder:run:{run_id}", mapping=record)
    app = create_app(ApiSettings(redis_url=redis_url, api_tokens=[TOKEN], result_max_chars=64))
    with TestClient(app) as test_client:
        yield test_client


def _json_answer(answer: Any, status: int, body: bytes) -> None:
    assert answer.status_code == status
    assert answer.content == body
    assert answer.headers.multi_items() == [
        ("content-length", str(len(body))),
        ("content-type", "application/json"),
    ]


def test_runs_are_answered_byte_for_byte_as_before(client: TestClient) -> None:
    for run_id, body in ANSWERS.items():
        _json_answer(client.get(f"/runs/{run_id}", headers=AUTH), 200, body)
    # A long poll of an ended run answers at once, the same bytes.
    for run_id in ("ok", "failed"):
        _json_answer(client.get(f"/runs/{run_id}?wait=30", headers=AUTH), 200, ANSWERS[run_id])
    # One still going is answered as it is when the wait runs out.
    _json_answer(client.get("/runs/pending?wait=0.2", headers=AUTH), 200, ANSWERS["pending"])


def test_a_submission_is_answered_as_before(client: TestClient) -> None:
    answer = client.post(SUBMIT, json={}, headers=AUTH)
    assert answer.status_code == 202
    run_id = answer.json()["id"]
    url = f"http://testserver/runs/{run_id}"
    assert answer.content == f'{{"id":"{run_id}","url":"{url}"}}'.encode()
    assert answer.headers.multi_items() == [
        ("content-length", str(len(answer.content))),
        ("content-type", "application/json"),
        ("location", url),
    ]
    # With no body at all, too: a run with no arguments.
    assert client.post(SUBMIT, headers=AUTH).status_code == 202


def test_errors_are_fastapis_and_the_token_is_checked_first(
    client: TestClient, rclient: redis.Redis
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for answer in (
            client.get("/runs/ok", headers=headers),
            client.get("/runs/ok?wait=abc", headers=headers),  # no 422 before the 401
            client.post(SUBMIT, json={"args": "x"}, headers=headers),  # no schema to strangers
            client.post(
                SUBMIT, content=b"{", headers={**headers, "content-type": "application/json"}
            ),
        ):
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json()["detail"] in (
                "missing bearer token: send 'Authorization: Bearer <token>'",
                "invalid bearer token",
            )
    missing = client.get("/runs/never-submitted", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json() == {
        "detail": "run 'never-submitted' was never submitted (or its record has expired)"
    }
    for wait in ("56", "-1", "abc", "nan", "inf", ""):
        answer = client.get("/runs/ok", params={"wait": wait}, headers=AUTH)
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"] == ["query", "wait"]
    too_long = client.get(f"/runs/{'x' * 201}", headers=AUTH)
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["loc"] == ["path", "run_id"]
    for body in (
        {"args": "x"},
        {"unknown": 1},
        [1],
        {"countdown": 1, "eta": "2030-01-01T00:00:00Z"},
    ):
        answer = client.post(SUBMIT, json=body, headers=AUTH)
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"][0] == "body"
    broken = client.post(SUBMIT, content=b"{", headers={**AUTH, "content-type": "application/json"})
    assert broken.status_code == 422
    assert broken.json()["detail"][0]["type"] == "json_invalid"
    unknown = client.post("/tasks/forwarder.nope/runs", json={}, headers=AUTH)
    assert unknown.status_code == 404
    assert "not registered" in unknown.json()["detail"]
    hidden = client.post("/tasks/celery.backend_cleanup/runs", json={}, headers=AUTH)
    assert hidden.status_code == 404
    assert "allow-list" in hidden.json()["detail"]
    assert rclient.llen("forwarder:default") == 0


def test_a_truncated_result_is_fetched_whole_from_the_backend(
    client: TestClient, rclient: redis.Redis
) -> None:
    big = {"data": "y" * 500}
    record = {"id": "big", "task": "forwarder.ping", "state": "SUCCESS", "result": '{"data": "…'}
    rclient.hset("forwarder:run:big", mapping=record)
    # The result backend holds the whole value (as a worker would have stored it).
    app: Any = client.app
    app.state.services.core.app.backend.store_result("big", big, "SUCCESS")
    answer = client.get("/runs/big", headers=AUTH)
    assert answer.status_code == 200
    assert answer.json()["result"] == big
    assert answer.json()["result_truncated"] is False


def test_answers_are_counted_under_the_route(client: TestClient) -> None:
    for _ in range(3):
        assert client.get("/runs/ok", headers=AUTH).status_code == 200
    for _ in range(2):
        assert client.post(SUBMIT, json={}, headers=AUTH).status_code == 202
    text = client.get("/metrics").text
    for line in (
        r'forwarder_api_requests_total\{method="GET",route="/runs/\{run_id\}",status="200"\} 3\.0',
        r'forwarder_api_requests_total\{method="POST",route="/tasks/\{name\}/runs",status="202"\} 2\.0',
        r'forwarder_api_runs_submitted_total\{task="forwarder.ping"\} 2\.0',
    ):
        assert re.search(f"^{line}$", text, re.MULTILINE), line


def _queued(rclient: redis.Redis, queue: str) -> dict[str, dict[str, Any]]:
    """Messages waiting in a broker queue, by task id: headers and decoded body."""
    out = {}
    # A priority puts the message in the queue's list for that priority (kombu's suffix).
    keys = [k for k in rclient.keys(f"forwarder:{queue}*") if rclient.type(k) == "list"]
    for raw in (m for key in keys for m in rclient.lrange(key, 0, -1)):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        out[message["headers"]["id"]] = {"headers": message["headers"], "body": body}
    return out


REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    *(("GET", f"/runs/{run_id}", {}) for run_id in (*RECORDS, "never", "x" * 201)),
    *(
        ("GET", f"/runs/ok?{query}", {})
        for query in ("wait=30", "wait=0.5", "wait=56", "wait=abc", "wait=1&wait=2", "x=1", "wait=")
    ),
    ("POST", SUBMIT, {"json": {}}),
    ("POST", SUBMIT, {}),
    ("POST", SUBMIT, {"json": {"args": [1, 2], "kwargs": {"a": "b"}}}),
    ("POST", SUBMIT, {"json": {"queue": "reports", "priority": 3, "countdown": 5, "expires": 600}}),
    ("POST", SUBMIT, {"json": {"eta": "2030-01-01T00:00:00Z"}}),
    ("POST", SUBMIT, {"json": {"args": "x"}}),
    ("POST", SUBMIT, {"json": [1]}),
    ("POST", SUBMIT, {"content": b"null", "headers": {"content-type": "application/json"}}),
    ("POST", SUBMIT, {"content": b"{", "headers": {"content-type": "application/json"}}),
    (
        "POST",
        SUBMIT,
        {"content": b'{"args": [NaN]}', "headers": {"content-type": "application/json"}},
    ),
    ("POST", SUBMIT, {"content": b"{}", "headers": {"content-type": "text/plain"}}),
    ("POST", SUBMIT, {"content": b"{}", "headers": {"content-type": "application/json; x=y"}}),
    ("POST", SUBMIT, {"content": b"{}"}),
    ("POST", f"{SUBMIT}?x=1", {"json": {}}),
    ("POST", "/tasks/forwarder.nope/runs", {"json": {}}),
]


def _answer(client: TestClient, rclient: redis.Redis, method: str, path: str, **kw: Any) -> Any:
    """Status, headers and body, with a submitted run's id replaced by its message and
    record (ids are fresh on every submission)."""
    headers = {**AUTH, **kw.pop("headers", {})}
    answer = client.request(method, path, headers=headers, **kw)
    content, items = answer.content, answer.headers.multi_items()
    sent: Any = None
    if answer.status_code == 202:
        run_id = answer.json()["id"]
        content = content.replace(run_id.encode(), b"<id>")
        items = [(k, v.replace(run_id, "<id>")) for k, v in items]
        message = next(m for q in ("default", "reports") if (m := _queued(rclient, q).get(run_id)))
        record = rclient.hgetall(f"forwarder:run:{run_id}")
        sent = (
            message["body"],
            {k: message["headers"][k] for k in ("task", "argsrepr", "kwargsrepr")},
            {k: record[k] for k in ("task", "state", "source", "args", "kwargs")},
        )
    return answer.status_code, items, content, sent


def test_the_lean_binding_answers_as_fastapis_own_handler(
    client: TestClient, rclient: redis.Redis
) -> None:
    app: Any = client.app
    lean = [_answer(client, rclient, method, path, **dict(kw)) for method, path, kw in REQUESTS]
    # While a dependency is overridden, FastAPI's own handler binds every request.
    app.dependency_overrides[get_settings] = get_settings
    fastapis = [_answer(client, rclient, method, path, **dict(kw)) for method, path, kw in REQUESTS]
    for request, ours, theirs in zip(REQUESTS, lean, fastapis, strict=True):
        assert ours == theirs, request


def test_well_formed_requests_skip_fastapis_solver(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    solved: list[str] = []
    solve = fastapi.routing.solve_dependencies

    async def counting(**kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await solve(**kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    assert client.get("/runs/ok?wait=30", headers=AUTH).status_code == 200
    assert client.post(SUBMIT, json={"args": [1]}, headers=AUTH).status_code == 202
    assert client.post(SUBMIT, headers=AUTH).status_code == 202
    assert solved == []
    # What the binding does not take, FastAPI's handler answers.
    assert client.get("/runs/ok?wait=abc", headers=AUTH).status_code == 422
    assert client.post(SUBMIT, json={"args": "x"}, headers=AUTH).status_code == 422
    assert client.get("/runs", headers=AUTH).status_code == 200  # another shape of route
    assert solved == ["/runs/ok", SUBMIT, "/runs"]


def test_openapi_describes_the_routes_as_before(client: TestClient) -> None:
    expected = json.loads((Path(__file__).parent / "openapi_round_trip.json").read_text())
    schema = client.get("/openapi.json").json()
    operations = {
        "GET /runs/{run_id}": schema["paths"]["/runs/{run_id}"]["get"],
        "POST /tasks/{name}/runs": schema["paths"]["/tasks/{name}/runs"]["post"],
    }
    assert operations == expected["operations"]
    for name, model in expected["schemas"].items():
        assert schema["components"]["schemas"][name] == model, name
    assert schema["components"]["securitySchemes"] == expected["securitySchemes"]


def test_the_api_server_runs_on_uvloop_and_httptools(stack: Any) -> None:
    # `forwarder api` leaves uvicorn's loop and parser on "auto": the compiled ones when
    # installed (uvicorn[standard]). Their extension modules are mapped only once loaded.
    maps = Path(f"/proc/{stack.procs['api'].pid}/maps").read_text()
    assert re.search(r"/uvloop/loop\.[^/]*\.so$", maps, re.MULTILINE)
    assert re.search(r"/httptools/parser/parser\.[^/]*\.so$", maps, re.MULTILINE)
