"""Hostile input at the API's door, against the real ``forwarder api`` process (uvicorn with
the app factory and ``forwarder_api.http_guard``'s protocol, as the chart runs it).

Every case gets a 4xx or a closed connection: never a 500, never a hang. Bodies go to the
shared stack's api; slow clients go to an api of their own with short read deadlines, so a
timeout takes a second or two, and a second client checks that the server keeps answering
everyone else meanwhile.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from forwarder_worker.values import MAX_DEPTH
from support.api_process import TOKEN, api_env, start_api
from support.processes import forwarder_env, free_port, running
from support.stack import Stack

SUBMIT = "/tasks/forwarder.ping/runs"
HEAD_TIMEOUT = BODY_TIMEOUT = 1.5
MAX_HEAD = 8192


def nested(depth: int) -> str:
    """A JSON list ``depth`` levels deep."""
    return "[" * depth + "]" * depth


def kwargs_body(value_json: str) -> bytes:
    return f'{{"kwargs": {{"a": {value_json}}}}}'.encode()


def post(api: httpx.Client, body: bytes) -> httpx.Response:
    return api.post(SUBMIT, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("body", "status"),
    [
        # Past the JSON decoder's recursion limit: not JSON it can read.
        pytest.param(kwargs_body(nested(100_000)), 400, id="nested-100000"),
        # Decodable, but deeper than the broker, worker and records are trusted to carry.
        pytest.param(kwargs_body(nested(200)), 422, id="nested-200"),
        pytest.param(kwargs_body(nested(MAX_DEPTH)), 422, id="nested-one-past-the-limit"),
        pytest.param(kwargs_body("1e999"), 422, id="float-infinity"),
        pytest.param(kwargs_body("-1e999"), 422, id="float-minus-infinity"),
        pytest.param(kwargs_body("1" * 5000), 400, id="int-5000-digits"),
        pytest.param(b'{"kwargs": {"a": "\xff\xfe"}}', 400, id="invalid-utf8"),
        # Python's decoder lets an encoded surrogate through; the model refuses it.
        pytest.param(b'{"kwargs": {"a": "\xed\xa0\x80"}}', 422, id="utf8-surrogate"),
        pytest.param(b'{"kwargs": {"a": "\\ud800"}}', 422, id="escaped-lone-surrogate"),
        pytest.param(b'{"kwargs": {"\\udfff": 1}}', 422, id="lone-surrogate-key"),
        pytest.param(b'{"countdown": -1}', 422, id="countdown-negative"),
        pytest.param(b'{"countdown": 1e12}', 422, id="countdown-absurd"),
        pytest.param(b'{"countdown": 1e999}', 422, id="countdown-infinity"),
        pytest.param(b'{"expires": -5}', 422, id="expires-negative"),
        pytest.param(b'{"expires": 0}', 422, id="expires-zero"),
        pytest.param(b'{"expires": 1e15}', 422, id="expires-absurd"),
        pytest.param(b'{"eta": "9999-12-31T00:00:00Z"}', 422, id="eta-absurd"),
        pytest.param(b'{"eta": "2026-01-01T00:00:00"}', 422, id="eta-without-zone"),
        pytest.param(b'{"priority": 10000000000000000000000}', 422, id="priority-huge"),
        pytest.param(b"\x00\x01\x02binary", 400, id="binary-junk"),
    ],
)
def test_hostile_body_gets_a_4xx(api: httpx.Client, body: bytes, status: int) -> None:
    response = post(api, body)
    assert response.status_code == status, response.text
    assert "detail" in response.json()
    assert api.get("/healthz").status_code == 200


def schedule(spec_kwargs: str = "{}", labels: str = "{}", status: str = "null") -> bytes:
    return (
        '{"apiVersion": "forwarder.dev/v1alpha1", "kind": "ScheduledTask", '
        f'"metadata": {{"name": "hostile", "labels": {labels}}}, "status": {status}, '
        f'"spec": {{"task": "forwarder.ping", "schedule": {{"every": 60}}, "kwargs": {spec_kwargs}}}}}'
    ).encode()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(schedule(spec_kwargs=f'{{"a": {nested(MAX_DEPTH)}}}'), id="deep-kwargs"),
        pytest.param(schedule(labels='{"a": "\\ud800"}'), id="surrogate-label"),
        pytest.param(schedule(status=nested(200)), id="deep-ignored-status"),
        pytest.param(schedule(spec_kwargs='{"a": 1e999}'), id="infinite-kwarg"),
    ],
)
def test_hostile_schedule_gets_422(api: httpx.Client, body: bytes) -> None:
    response = api.post("/schedules", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert api.get("/schedules/default/hostile").status_code == 404


def test_hostile_trigger_kwargs_get_422(api: httpx.Client) -> None:
    # The run-now route takes args and kwargs too, under the same bounds.
    response = api.post(
        "/schedules/default/no-such-schedule/trigger",
        content=f'{{"kwargs": {{"a": {nested(100)}}}}}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text


def test_duplicate_keys_last_one_wins(api: httpx.Client, wait_run: Callable[..., Any]) -> None:
    # RFC 8259 leaves duplicate names to the parser; Python's, like JavaScript's, keeps the
    # last, and so does the API (documented in docs/reliability.md).
    response = post(api, b'{"kwargs": {"a": 1}, "kwargs": {"b": 2, "b": 3}}')
    assert response.status_code == 202, response.text
    run = wait_run(response.json()["id"])
    assert run["state"] == "SUCCESS", run
    assert run["result"]["kwargs"] == {"b": 3}


def test_kwargs_at_the_nesting_limit_run_and_are_recorded(
    api: httpx.Client, wait_run: Callable[..., Any]
) -> None:
    # The deepest value the API takes goes through the broker, the worker and the record.
    deepest = json.loads(nested(MAX_DEPTH - 1))
    response = api.post(SUBMIT, json={"kwargs": {"a": deepest}, "args": [deepest]})
    assert response.status_code == 202, response.text
    run = wait_run(response.json()["id"])
    assert run["state"] == "SUCCESS", run
    assert run["result"]["kwargs"] == {"a": deepest}


# -- the HTTP layer: heads and slow clients, on a raw socket -------------------------------


@pytest.fixture(scope="module")
def guarded_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An api of its own (same Redis) with short read deadlines and a small head limit."""
    logs = tmp_path_factory.mktemp("hostile") / "logs"
    logs.mkdir()
    env = api_env(
        forwarder_env(stack.redis_url),
        flower_port=urlsplit(stack.flower_url).port or 0,
        logs=logs,
        FORWARDER_API_HEADER_TIMEOUT=str(HEAD_TIMEOUT),
        FORWARDER_API_BODY_TIMEOUT=str(BODY_TIMEOUT),
        FORWARDER_API_MAX_HEADER_BYTES=str(MAX_HEAD),
    )
    port = free_port()
    proc = start_api(env, logs / "api.log", port)
    with running(proc):
        yield f"127.0.0.1:{port}"
    output = proc.output()
    assert "Traceback" not in output and " 500" not in output, output[-3000:]


def connect(address: str) -> socket.socket:
    host, port = address.split(":")
    return socket.create_connection((host, int(port)), timeout=HEAD_TIMEOUT + 10)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a hang fails the test
    through the socket's timeout)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def answers_quickly(address: str) -> None:
    started = time.monotonic()
    response = httpx.get(f"http://{address}/healthz", timeout=5)
    assert response.status_code == 200
    # Well under any client's timeout; slack for a CI machine's shared cores.
    assert time.monotonic() - started < 2


def head(extra: str = "", path: str = SUBMIT) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\n{extra}"
    ).encode()


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(f"X-Big: {'a' * 2 * MAX_HEAD}\r\n\r\n", id="one-huge-header"),
        pytest.param("".join(f"X-H{i}: value\r\n" for i in range(2000)) + "\r\n", id="many"),
    ],
)
def test_oversized_head_gets_431_and_a_closed_connection(guarded_api: str, extra: str) -> None:
    with connect(guarded_api) as sock:
        sock.sendall(head(extra))
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    answers_quickly(guarded_api)


def test_oversized_url_gets_431(guarded_api: str) -> None:
    with connect(guarded_api) as sock:
        sock.sendall(head(path=f"/runs/{'x' * 2 * MAX_HEAD}") + b"\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def trickled_until_answered(address: str, sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` a byte every 0.2 s, checking that another client is answered at once
    after each, until the server answers this one; then everything it sends until it closes.
    Sending it all without an answer fails the test."""
    sock.settimeout(0.05)
    for byte in data:
        sock.sendall(bytes([byte]))
        answers_quickly(address)
        try:
            answer = sock.recv(65536)
            break
        except TimeoutError:
            time.sleep(0.15)
    else:
        pytest.fail("all of it was trickled in without a timeout")
    sock.settimeout(5)
    return answer + read_all(sock)


def test_a_silent_connection_gets_408_and_is_closed(guarded_api: str) -> None:
    started = time.monotonic()
    with connect(guarded_api) as sock:
        answers_quickly(guarded_api)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert HEAD_TIMEOUT - 0.2 < time.monotonic() - started < HEAD_TIMEOUT + 3


def test_a_trickled_head_gets_408_and_others_are_served(guarded_api: str) -> None:
    started = time.monotonic()
    with connect(guarded_api) as sock:
        answer = trickled_until_answered(guarded_api, sock, head("X-Slow: " + "s" * 100))
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert time.monotonic() - started < HEAD_TIMEOUT + 3


def test_a_trickled_body_gets_408_and_others_are_served(guarded_api: str) -> None:
    body = b'{"kwargs": {"pad": "' + b"x" * 200 + b'"}}'
    with connect(guarded_api) as sock:
        sock.sendall(head(f"Content-Length: {len(body)}\r\n\r\n"))
        started = time.monotonic()
        answer = trickled_until_answered(guarded_api, sock, body)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert time.monotonic() - started < BODY_TIMEOUT + 3


def test_many_slow_clients_at_once_do_not_starve_the_others(guarded_api: str) -> None:
    sockets = [connect(guarded_api) for _ in range(200)]
    try:
        for sock in sockets:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: api\r\n")
        for _ in range(5):
            answers_quickly(guarded_api)
            time.sleep(0.1)
        for sock in sockets:
            assert read_all(sock).startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in sockets:
            sock.close()
