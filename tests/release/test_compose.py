"""compose.yaml, checked without a Docker engine.

Compose itself (Debian's docker-compose 1.29, from ``make tools``) validates the file offline
with ``config``, given the ``.env`` the README's one-liner makes, and refuses it when a secret
is missing. The file is also held to the Helm chart: each Forwarder service runs a component
through the ``forwarder`` command (``component_command`` in forwarder_worker.local.cli) with the
chart's options, as the chart's user on a read-only root filesystem, so the two cannot drift.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from forwarder_api.settings import ApiSettings
from forwarder_worker.local.cli import build_parser, component_command
from forwarder_worker.runs.history import HistorySettings
from support.chart import CHART, REPO, render

COMPOSE = REPO / "compose.yaml"
EXAMPLE = REPO / "compose.env.example"
SECRETS = ("FORWARDER_REDIS_PASSWORD", "FORWARDER_API_TOKEN", "FORWARDER_FLOWER_PASSWORD")
# The chart's components that only make sense in a cluster, and local mode's stand-in for them.
CLUSTER_ONLY = {"operator"}
LOCAL_ONLY = {"folder"}


def services() -> dict[str, dict[str, Any]]:
    loaded: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return loaded


def forwarder_services() -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in services().items() if name != "redis"}


def readme_env_one_liner() -> str:
    """The README's command that makes .env from compose.env.example."""
    section = (REPO / "README.md").read_text().split("## With Docker Compose", 1)[1]
    (line,) = [line.strip() for line in section.splitlines() if line.strip().endswith("> .env")]
    return line


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose is not installed (`make tools` installs Debian's)")
    return found


def compose_config(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [docker_compose(), "--no-ansi", "-f", "compose.yaml", "config"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """compose.yaml beside the .env the README's one-liner makes, in a scratch folder."""
    shutil.copy(COMPOSE, tmp_path / "compose.yaml")
    shutil.copy(EXAMPLE, tmp_path / "compose.env.example")
    subprocess.run(["bash", "-c", readme_env_one_liner()], cwd=tmp_path, check=True, timeout=30)
    return tmp_path


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs if not key.startswith("#")}


def test_compose_config_accepts_the_file_with_the_readme_env(project: Path) -> None:
    done = compose_config(project)
    assert done.returncode == 0, done.stderr
    env = read_env(project / ".env")
    for name in SECRETS:
        assert len(env[name]) >= 24, f"the one-liner left {name} empty"
    config = yaml.safe_load(done.stdout)["services"]
    assert config["api"]["environment"]["FORWARDER_API_TOKENS"] == env["FORWARDER_API_TOKEN"]
    assert config["redis"]["environment"]["REDISCLI_AUTH"] == env["FORWARDER_REDIS_PASSWORD"]
    flower_auth = f"{env['FORWARDER_FLOWER_USER']}:{env['FORWARDER_FLOWER_PASSWORD']}"
    assert config["flower"]["environment"]["FLOWER_BASIC_AUTH"] == flower_auth
    for name, spec in config.items():
        if name != "redis":
            assert (
                spec["environment"]["FORWARDER_REDIS_PASSWORD"] == env["FORWARDER_REDIS_PASSWORD"]
            )


@pytest.mark.parametrize("secret", [*SECRETS, "FORWARDER_FLOWER_USER"])
def test_compose_config_refuses_a_missing_secret(project: Path, secret: str) -> None:
    env = (project / ".env").read_text()
    (project / ".env").write_text(re.sub(rf"^{secret}=.*$", f"{secret}=", env, flags=re.M))
    done = compose_config(project)
    assert done.returncode != 0
    assert f"set {secret} in .env" in done.stderr


def test_compose_file_holds_no_secret_and_no_default_for_one() -> None:
    text = COMPOSE.read_text()
    for match in re.finditer(r"\$\{(\w+)([^}]*)\}", text):
        name, rest = match[1], match[2]
        if name in (*SECRETS, "FORWARDER_FLOWER_USER"):
            assert rest.startswith(":?"), f"{match[0]} must fail when unset, not default"
    example = read_env(EXAMPLE)
    for name in SECRETS:
        assert example[name] == "", f"compose.env.example must leave {name} empty"
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in ignored


@pytest.fixture(scope="module")
def chart_containers() -> dict[str, dict[str, Any]]:
    """Each chart Deployment's container (default values), by the component it runs."""
    chart = helm.Chart.load(CHART)
    try:
        rendered = render(chart)
    finally:
        chart.close()
    containers = {}
    for deployment in rendered.of_kind("Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"][0] == "forwarder", deployment["metadata"]["name"]
        containers[container["command"][1]] = container
    return containers


@pytest.fixture(scope="module")
def chart_commands(chart_containers: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Each chart Deployment's container command, by the component it runs."""
    return {
        name: [*container["command"], *container.get("args", [])]
        for name, container in chart_containers.items()
    }


def option_names(command: list[str]) -> list[str]:
    """``--name`` of every option, in order (values and positional words left out)."""
    return [arg.split("=", 1)[0] for arg in command if arg.startswith("--")]


def test_compose_runs_the_charts_components_with_the_charts_options(
    chart_commands: dict[str, list[str]],
) -> None:
    chart_components = set(chart_commands)
    compose_components = {spec["command"][1] for spec in forwarder_services().values()}
    assert compose_components == chart_components - CLUSTER_ONLY | LOCAL_ONLY
    parser = build_parser()
    for name, spec in forwarder_services().items():
        command = spec["command"]
        assert command[0] == "forwarder", name
        component = command[1]
        # The component is one the forwarder command runs, by the code path the chart uses.
        assert parser.parse_known_args(command[1:])[0].command == component
        assert component_command(component), name  # a KeyError for an unknown component
        if component in chart_commands:
            assert option_names(command) == option_names(chart_commands[component]), (
                f"compose's {name} and the chart's {component} pass different options"
            )
    beats = [name for name, spec in forwarder_services().items() if spec["command"][1] == "beat"]
    assert len(beats) == 2, "two beats: one holds the scheduler's lock, the other waits"


def test_compose_services_run_as_the_charts_user_read_only_and_healthy() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pod = values["podSecurityContext"]
    images = {spec["image"] for spec in forwarder_services().values()}
    assert len(images) == 1, f"one image for every component, not {images}"
    for name, spec in services().items():
        assert spec["read_only"] is True, name
        assert spec["tmpfs"] == ["/tmp"], name
        assert spec["cap_drop"] == ["ALL"], name
        assert spec["restart"] == "unless-stopped", name
        assert spec["healthcheck"]["test"], name
        user, group = (int(part) for part in spec["user"].split(":"))
        assert user != 0, name
        if name != "redis":
            assert (user, group) == (pod["runAsUser"], pod["runAsGroup"]), name
            assert spec["depends_on"]["redis"]["condition"] == "service_healthy", name
    redis_command = " ".join(services()["redis"]["command"])
    for setting in ("--appendonly yes", "--requirepass", "--maxmemory-policy noeviction"):
        assert setting in redis_command


def test_compose_sets_only_settings_that_exist() -> None:
    """A misspelt FORWARDER_* variable would be ignored silently by pydantic-settings."""
    fields = {*ApiSettings.model_fields, *HistorySettings.model_fields}
    known = {f"FORWARDER_{field.upper()}" for field in fields}
    for name, spec in forwarder_services().items():
        for variable in spec["environment"]:
            if variable.startswith("FORWARDER_"):
                assert variable in known, f"{name}: {variable} is no setting"


def test_compose_mounts_the_schedules_folder_the_folder_source_reads() -> None:
    folder = forwarder_services()["folder"]
    directory = folder["command"][folder["command"].index("--dir") + 1]
    assert f"./schedules:{directory}:ro" in folder["volumes"]
    api = forwarder_services()["api"]
    assert api["environment"]["FORWARDER_SCHEDULES_DIR"] == directory
    assert api["environment"]["FORWARDER_SCHEDULES_MODE"] == "local"
    assert f"./schedules:{directory}" in api["volumes"]


def test_compose_keeps_the_exported_history_on_a_volume() -> None:
    """The root filesystem is read-only: the history export writes under a named volume, at
    the folder the image gives its user (a new volume takes that owner)."""
    worker = forwarder_services()["worker"]
    history = worker["environment"]["FORWARDER_HISTORY_DIR"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in worker["volumes"]}
    (mounted,) = [path for path in mounts if history.startswith(f"{path}/")]
    assert mounts[mounted] in yaml.safe_load(COMPOSE.read_text())["volumes"]
    assert f"install -d -o 10001 -g 10001 {mounted}" in (REPO / "Dockerfile").read_text()


def test_compose_checks_health_and_runs_redis_as_the_chart_does(
    chart_containers: dict[str, dict[str, Any]],
) -> None:
    # Beat serves no port: the chart's exec probe is its health check, and the folder's.
    probe = chart_containers["beat"]["readinessProbe"]["exec"]["command"]
    for name in ("beat-1", "beat-2", "folder"):
        assert services()[name]["healthcheck"]["test"] == ["CMD", *probe], name
    values = yaml.safe_load((CHART / "values.yaml").read_text())["redis"]["image"]
    assert services()["redis"]["image"] == f"{values['repository']}:{values['tag']}"
