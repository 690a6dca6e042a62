"""A live Forwarder stack for the API tests, started once per session and shared; and the chart
installed in the real control plane for the cluster backend's tests.

Real processes only: an embedded Redis, a Celery worker, beat, Flower, local mode's folder
source and the API itself under uvicorn (``--factory forwarder_api.main:create_app``), all
against the same Redis. Tests use distinct task ids and schedule names, so they can share it.

The cluster backend's tests get charts/forwarder installed by Helm into the control plane
(:func:`chart_release`, :func:`scoped_release`): the api and the operator then authenticate
with tokens of the chart's own ServiceAccounts and hold exactly the chart's RBAC.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from forwarder_worker.local.cli import component_command
from support.chart_release import Release, installed
from support.controlplane import ControlPlane
from support.processes import (
    BIN,
    Proc,
    celery_beat,
    celery_worker,
    eventually,
    forwarder_env,
    start,
)
from support.redis_server import embedded_redis

TOKEN = "test-token-0123456789"
FLOWER_USER, FLOWER_PASSWORD = "flower-user", "flower-pass-9876"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """The running stack: where things are and how to reach them."""

    redis_url: str
    api_url: str
    flower_url: str
    schedules_dir: Path
    logs_dir: Path
    history_dir: Path
    procs: dict[str, Proc]
    flower_auth: tuple[str, str] = (FLOWER_USER, FLOWER_PASSWORD)

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=30)


def api_command(port: int) -> list[str]:
    """How ``forwarder api`` starts the API (the CLI's own command line)."""
    return component_command("api", ["--host", "127.0.0.1", "--port", str(port)])


def _up(proc: Proc, url: str, auth: tuple[str, str] | None = None) -> bool:
    if not proc.alive():
        raise AssertionError(f"{proc.name} exited:\n{proc.output()[-3000:]}")
    try:
        return httpx.get(url, auth=auth, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("stack")
    logs, schedules, history = base / "logs", base / "schedules", base / "history"
    for folder in (logs, schedules, history):
        folder.mkdir()
    api_port, flower_port = free_port(), free_port()
    with ExitStack() as stack_exit:
        server = stack_exit.enter_context(embedded_redis())
        redis_url = f"redis://127.0.0.1:{server.port}/0"
        flower_url = f"http://127.0.0.1:{flower_port}"
        env = forwarder_env(
            redis_url,
            FORWARDER_API_TOKENS=TOKEN,
            FORWARDER_API_INSPECT_TIMEOUT="2",
            FORWARDER_SCHEDULES_MODE="local",
            FORWARDER_SCHEDULES_DIR=str(schedules),
            FORWARDER_LOGS_DIR=str(logs),
            FORWARDER_HISTORY_DIR=str(history),
            FORWARDER_FLOWER_URL=flower_url,
            FORWARDER_FLOWER_USER=FLOWER_USER,
            FORWARDER_FLOWER_PASSWORD=FLOWER_PASSWORD,
            FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{FLOWER_PASSWORD}",
        )
        procs = {
            "worker": celery_worker(env, logs / "worker.log", concurrency=2),
            "beat": celery_beat(env, logs / "beat.log"),
            "flower": start(
                [
                    str(BIN / "celery"),
                    "-A",
                    "forwarder_worker.app",
                    "flower",
                    "--address=127.0.0.1",
                    f"--port={flower_port}",
                ],
                env,
                logs / "flower.log",
                "flower",
            ),
            "folder": start(
                [sys.executable, "-m", "forwarder_operator.folder", "--dir", str(schedules)],
                env,
                logs / "folder.log",
                "folder",
            ),
            "api": start(api_command(api_port), env, logs / "api.log", "api"),
        }
        running = Stack(
            redis_url,
            f"http://127.0.0.1:{api_port}",
            flower_url,
            schedules,
            logs,
            history,
            procs,
        )
        try:
            eventually(lambda: _up(procs["api"], f"{running.api_url}/healthz"), 90, 0.2, "api up")
            eventually(
                lambda: _up(
                    procs["flower"], f"{flower_url}/api/workers", (FLOWER_USER, FLOWER_PASSWORD)
                ),
                90,
                0.2,
                "flower up",
            )
            eventually(lambda: " ready." in procs["worker"].output(), 90, 0.2, "worker ready")
            eventually(lambda: "watching" in procs["folder"].output(), 90, 0.2, "folder up")
            yield running
        except BaseException:
            for proc in procs.values():
                sys.stderr.write(f"----- {proc.name} -----\n{proc.output()[-4000:]}\n")
            raise
        finally:
            for proc in procs.values():
                proc.stop()


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


FINAL = {"SUCCESS", "FAILURE", "REVOKED", "SKIPPED"}


@pytest.fixture
def wait_run(api: httpx.Client) -> Callable[..., dict[str, Any]]:
    """Poll GET /runs/{id} until the run is in one of ``states`` (default: final)."""

    def wait(run_id: str, states: set[str] = FINAL, timeout: float = 60) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            body: dict[str, Any] = api.get(f"/runs/{run_id}").json()
            return body if body.get("state") in states else None

        result: dict[str, Any] = eventually(reached, timeout, 0.1, f"run {run_id} in {states}")
        return result

    return wait


# -- the chart in the control plane (the cluster schedules backend) -------------------------


@pytest.fixture
def chart_release(crds: ControlPlane, namespace: str) -> Iterator[Release]:
    """charts/forwarder with its defaults, release ``api`` in the test's namespace: the api's
    and the operator's ServiceAccounts with the chart's ClusterRoles (every namespace)."""
    with installed(crds, namespace, "api") as release:
        yield release


@pytest.fixture
def watched(crds: ControlPlane, namespace: str) -> Iterator[list[str]]:
    """Two namespaces for ``watchNamespaces`` (and a third, ``<namespace>-c``, outside it).
    Their ScheduledTasks are deleted after the test: the control plane is the session's, and
    a cluster-wide operator of a later test would take them on."""
    names = [f"{namespace}-a", f"{namespace}-b", f"{namespace}-c"]
    for name in names:
        crds.create_namespace(name)
    yield names[:2]
    for name in names:
        crds.kubectl("delete", "scheduledtasks", "--all", "-n", name, "--wait=false")


@pytest.fixture
def scoped_release(crds: ControlPlane, namespace: str, watched: list[str]) -> Iterator[Release]:
    """charts/forwarder with ``watchNamespaces``, release ``api`` in the test's namespace: the
    api's ServiceAccount has Roles in the watched namespaces only."""
    with installed(crds, namespace, "api", {"watchNamespaces": watched}) as release:
        yield release
