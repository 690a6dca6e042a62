"""The release artifacts ``make dist`` builds, used as a user would use them.

The sdist and the wheel pass ``twine check`` (``make dist`` fails otherwise) and carry the
single-sourced version; the wheel holds every file of the three package folders, package data
included; the chart's package carries the same appVersion. The wheel, installed alone into a
fresh virtualenv and used from a folder with no source tree, runs the CLI, Celery's report,
the api's factory and the whole local stack until a scheduled run succeeds, then stops
leaving no process behind.
"""

from __future__ import annotations

import signal
import subprocess
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml
from forwarder_worker import Core, Settings
from support.chart import REPO
from support.processes import Proc, alive_pids, descendants, eventually, free_port
from support.release import VERSION, Release, WheelVenv

pytestmark = pytest.mark.slow

PACKAGE_FOLDERS = ("worker", "operator", "api")
PING_EVERY_SECOND = """\
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata:
  name: every-second
spec:
  task: forwarder.ping
  schedule:
    every: 1s
"""


def package_files() -> set[str]:
    """Every file under the package folders, as the wheel names it (caches left out)."""
    found = set()
    for folder in PACKAGE_FOLDERS:
        for path in (REPO / folder).rglob("*"):
            relative = path.relative_to(REPO / folder)
            if path.is_file() and not {"__pycache__", ".mypy_cache"} & set(relative.parts):
                if relative.parts[0].endswith(".egg-info"):
                    continue
                found.add(relative.as_posix())
    return found


def test_dist_holds_the_sdist_the_wheel_and_the_chart(release: Release) -> None:
    assert sorted(p.name for p in release.folder.iterdir()) == sorted(
        [release.sdist.name, release.wheel.name, release.chart.name]
    )
    names = set(zipfile.ZipFile(release.wheel).namelist())
    missing = package_files() - names
    assert not missing, f"the wheel leaves out {sorted(missing)} (pyproject's package-data)"
    assert not [n for n in names if n.startswith(("tests/", "bench/", "charts/"))]
    metadata = zipfile.ZipFile(release.wheel).read(f"forwarder-{VERSION}.dist-info/METADATA")
    assert f"\nVersion: {VERSION}\n" in metadata.decode()
    with tarfile.open(release.chart) as chart:
        manifest = yaml.safe_load(chart.extractfile("forwarder/Chart.yaml").read())  # type: ignore[union-attr]
        packed = set(chart.getnames())
    assert manifest["appVersion"] == VERSION
    assert "forwarder/values.schema.json" in packed
    assert any(name.startswith("forwarder/crds/") for name in packed)


def test_the_wheel_alone_runs_the_cli_celery_and_the_api_factory(wheel_venv: WheelVenv) -> None:
    assert not list(wheel_venv.workdir.iterdir()), "the working directory holds nothing"
    helped = wheel_venv.run("forwarder", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "up" in helped.stdout
    versioned = wheel_venv.run("forwarder", "--version")
    assert versioned.stdout.strip() == f"forwarder {VERSION}"
    report = wheel_venv.run("celery", "-A", "forwarder_worker.app", "report")
    assert report.returncode == 0, report.stderr
    assert "task_serializer: 'json'" in report.stdout
    factory = wheel_venv.run(
        "python",
        "-c",
        "import forwarder_api, forwarder_operator, forwarder_worker;"
        "from forwarder_api.main import create_app; app = create_app();"
        "print(app.version);"
        "print(*(m.__file__ for m in (forwarder_api, forwarder_operator, forwarder_worker)))",
    )
    assert factory.returncode == 0, factory.stderr
    version, files = factory.stdout.splitlines()
    assert version == VERSION
    for module_file in files.split():
        assert module_file.startswith(f"{wheel_venv.path}/lib/"), module_file


def test_the_wheel_alone_runs_the_local_stack(wheel_venv: WheelVenv, tmp_path: Path) -> None:
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    (schedules / "every-second.yaml").write_text(PING_EVERY_SECOND)
    state, api_port = tmp_path / "state", free_port()
    log = tmp_path / "up.log"
    with log.open("ab") as handle:
        popen = subprocess.Popen(
            [
                str(wheel_venv.bin / "forwarder"),
                "up",
                "--schedules",
                str(schedules),
                "--state-dir",
                str(state),
                "--flower-port",
                str(free_port()),
                "--api-port",
                str(api_port),
                "--api-token",
                "wheel-test-token",
            ],
            env=wheel_venv.env(),
            cwd=wheel_venv.workdir,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    up = Proc(popen, log, "up")
    try:
        eventually(lambda: (state / "redis-url").exists(), 30, message="embedded Redis up")
        core = Core.from_settings(Settings(redis_url=(state / "redis-url").read_text().strip()))
        try:
            eventually(
                lambda: core.runs.summary("default/every-second").succeeded >= 1,
                60,
                interval=0.2,
                message="a run of the schedule succeeded",
            )
        finally:
            core.close()

        def api_lists_the_schedule() -> bool:
            answer = httpx.get(
                f"http://127.0.0.1:{api_port}/schedules",
                headers={"Authorization": "Bearer wheel-test-token"},
                timeout=5,
            )
            return answer.status_code == 200 and "every-second" in answer.text

        eventually(api_lists_the_schedule, 30, interval=0.5, message="the API serves it")
        status = wheel_venv.run("forwarder", "status", "--state-dir", str(state))
        assert any(
            "default/every-second" in line and "SUCCESS" in line
            for line in status.stdout.splitlines()
        ), status.stdout + status.stderr

        family = descendants(up.pid)
        assert len(family) >= 6, "worker, beat, flower, folder source, api and valkey-server"
        up.popen.send_signal(signal.SIGTERM)
        assert up.popen.wait(60) == 0
        eventually(lambda: not alive_pids(family), 10, message="no process left behind")
    except BaseException:
        print(up.output()[-8000:])
        raise
    finally:
        up.stop()
