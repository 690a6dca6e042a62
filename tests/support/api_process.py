"""The Forwarder API (and Flower) as real subprocesses: for the fault and security suites, and
the dashboard's browser tests on a cluster (the api in cluster mode)."""

from __future__ import annotations

from pathlib import Path

import httpx
from forwarder_worker.local.cli import component_command

from support.processes import BIN, Proc, eventually, start

TOKEN = "fault-suite-token-0123456789"
FLOWER_USER, FLOWER_PASSWORD = "flower-admin", "flower-pw-for-tests"


def api_env(env: dict[str, str], *, flower_port: int, logs: Path, **extra: str) -> dict[str, str]:
    """``env`` plus what the API needs: a token, local schedules, Flower's address."""
    schedules = logs.parent / "schedules"
    schedules.mkdir(exist_ok=True)
    return {
        **env,
        "FORWARDER_API_TOKENS": TOKEN,
        "FORWARDER_SCHEDULES_MODE": "local",
        "FORWARDER_SCHEDULES_DIR": str(schedules),
        "FORWARDER_LOGS_DIR": str(logs),
        "FORWARDER_FLOWER_URL": f"http://127.0.0.1:{flower_port}",
        "FORWARDER_FLOWER_USER": FLOWER_USER,
        "FORWARDER_FLOWER_PASSWORD": FLOWER_PASSWORD,
        "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}",
        **extra,
    }


def start_api(env: dict[str, str], log: Path, port: int, name: str = "api") -> Proc:
    """``uvicorn --factory forwarder_api.main:create_app`` on 127.0.0.1:``port``, ready (or
    stopped again, if it never answers)."""
    proc = start(
        component_command("api", ["--host", "127.0.0.1", "--port", str(port)]),
        env,
        log,
        name,
    )
    try:
        eventually(
            lambda: _answers(proc, f"http://127.0.0.1:{port}/healthz"), 90, 0.2, message=name
        )
    except BaseException:
        proc.stop()
        raise
    return proc


def start_flower(env: dict[str, str], log: Path, port: int) -> Proc:
    """``celery flower`` with basic auth on 127.0.0.1:``port``, ready."""
    proc = start(
        [
            str(BIN / "celery"),
            "-A",
            "forwarder_worker.app",
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
        ],
        env,
        log,
        "flower",
    )
    eventually(
        lambda: _answers(proc, f"http://127.0.0.1:{port}/healthcheck"), 90, 0.2, message="flower"
    )
    return proc


def client(port: int, token: str | None = TOKEN) -> httpx.Client:
    """An HTTP client for the API, with the bearer token unless ``token`` is None."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30)


def _answers(proc: Proc, url: str) -> bool:
    if not proc.alive():
        raise AssertionError(f"{proc.name} exited:\n{proc.output()[-3000:]}")
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def flower_sees_worker(port: int, auth: tuple[str, str], prefix: str) -> bool:
    """Whether Flower on ``port`` lists a worker whose name starts with ``prefix`` (asking
    the workers afresh)."""
    try:
        reply = httpx.get(f"http://127.0.0.1:{port}/api/workers?refresh=1", auth=auth, timeout=10)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200 and any(name.startswith(prefix) for name in reply.json())


def api_ready(port: int) -> bool:
    """Whether the api on ``port`` answers ``/readyz`` with 200 (it reaches Redis)."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).is_success
    except httpx.HTTPError:
        return False
