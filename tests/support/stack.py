"""A live local-mode Forwarder stack in real processes: the one the API and dashboard tests use.

An embedded Redis, a Celery worker, beat, Flower, local mode's folder source and the API
itself under uvicorn (``--factory forwarder_api.main:create_app``), all against the same
Redis, as ``forwarder up`` runs them. Extra environment (e.g. showing tracebacks) is given to
every process, so each suite states what it changes from the defaults.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from forwarder_worker.local.cli import component_command

from support.processes import (
    BIN,
    Proc,
    celery_beat,
    celery_worker,
    eventually,
    forwarder_env,
    free_port,
    start,
)
from support.redis_server import embedded_redis

TOKEN = "test-token-0123456789"
FLOWER_USER, FLOWER_PASSWORD = "flower-user", "flower-pass-9876"


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


@contextmanager
def running_stack(base: Path, **extra_env: str) -> Iterator[Stack]:
    """The whole stack with its files under ``base``, ready; stopped on exit."""
    logs, schedules, history = base / "logs", base / "schedules", base / "history"
    for folder in (logs, schedules, history):
        folder.mkdir(exist_ok=True)
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
            **extra_env,
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
