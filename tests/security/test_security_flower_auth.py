"""Flower never serves without authentication, except in local mode with an explicit flag.

``forwarder flower`` refuses (one line, exit 2) without FLOWER_BASIC_AUTH or Flower's OAuth
``--auth``; ``--insecure-no-auth`` is refused outside local mode. With credentials Flower
answers 401 to anonymous requests. ``forwarder up`` always starts Flower with credentials
(generated when not given).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from support.processes import BIN, eventually, forwarder_env, free_port, running, start


def _status(port: int, auth: tuple[str, str] | None = None) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", auth=auth, timeout=5).status_code
    except httpx.HTTPError:
        return None


def _listening(port: int) -> bool:
    return _status(port) is not None


@pytest.mark.parametrize(
    ("extra_env", "args", "says"),
    [
        ({}, [], "refusing to start Flower without authentication"),
        ({"FLOWER_BASIC_AUTH": ""}, [], "refusing to start Flower without authentication"),
        ({}, ["--insecure-no-auth"], "only allowed in local mode"),
    ],
)
def test_flower_refuses_to_start_without_auth(
    redis_url: str, extra_env: dict[str, str], args: list[str], says: str
) -> None:
    port = free_port()
    env = forwarder_env(redis_url)
    env.pop("FLOWER_BASIC_AUTH", None)
    env.update(extra_env)
    done = subprocess.run(
        [str(BIN / "forwarder"), "flower", f"--port={port}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert not _listening(port)


@pytest.mark.slow
def test_flower_with_credentials_rejects_anonymous_requests(redis_url: str, logs: Path) -> None:
    port = free_port()
    env = forwarder_env(redis_url, FLOWER_BASIC_AUTH="admin:pw")
    flower = start(
        [str(BIN / "forwarder"), "flower", "--address=127.0.0.1", f"--port={port}"],
        env,
        logs / "flower.log",
        "flower",
    )
    with running(flower):
        eventually(lambda: _listening(port), 90, 0.5, message="Flower listening")
        assert _status(port) == 401
        assert _status(port, ("admin", "wrong")) == 401
        assert _status(port, ("admin", "pw")) == 200


@pytest.mark.slow
def test_insecure_flag_works_only_in_local_mode(redis_url: str, logs: Path) -> None:
    port = free_port()
    env = forwarder_env(redis_url, FORWARDER_SCHEDULES_MODE="local")
    env.pop("FLOWER_BASIC_AUTH", None)
    flower = start(
        [
            str(BIN / "forwarder"),
            "flower",
            "--insecure-no-auth",
            "--address=127.0.0.1",
            f"--port={port}",
        ],
        env,
        logs / "flower.log",
        "flower",
    )
    with running(flower):
        eventually(lambda: _listening(port), 90, 0.5, message="Flower listening")
        assert _status(port) == 200


@pytest.mark.slow
def test_forwarder_up_starts_flower_with_credentials(tmp_path: Path, logs: Path) -> None:
    flower_port, api_port = free_port(), free_port()
    folder = tmp_path / "schedules"
    folder.mkdir()
    env = forwarder_env("redis://unused")
    del env["FORWARDER_REDIS_URL"]
    env.pop("FLOWER_BASIC_AUTH", None)
    up = start(
        [
            str(BIN / "forwarder"),
            "up",
            "--schedules",
            str(folder),
            "--flower-port",
            str(flower_port),
            "--api-port",
            str(api_port),
            "--state-dir",
            str(tmp_path / "state"),
            "--flower-password",
            "given-pw",
        ],
        env,
        logs / "up.log",
        "up",
    )
    with running(up):
        eventually(lambda: _listening(flower_port), 120, 0.5, message="Flower listening")
        assert _status(flower_port) == 401
        assert _status(flower_port, ("forwarder", "given-pw")) == 200
