"""The release suite's parts: the artifacts ``make dist`` builds, and a virtualenv with only
the wheel installed, used from a folder that holds no source tree.

Installing the wheel's dependencies takes about a minute, so the virtualenv is cached under
``~/.cache/forwarder/wheel-venv/<digest>/`` (``$XDG_CACHE_HOME`` is honoured), keyed by a
digest of the wheel's contents and the Python version: a changed module or dependency makes a
new one, and older ones are removed when it is made.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from support.chart import REPO

VERSION: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# The image's environment (Dockerfile ENV): nothing in the working directory is importable.
IMAGE_ENV = {"PYTHONSAFEPATH": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
COMPLETE = ".complete"


@dataclass(frozen=True)
class Release:
    """What ``make dist`` left in its folder."""

    folder: Path
    sdist: Path
    wheel: Path
    chart: Path


def make_dist(folder: Path) -> Release:
    """``make dist`` into ``folder`` (it fails on a twine check that does not pass)."""
    done = subprocess.run(
        ["make", "--no-print-directory", "dist", f"DIST={folder}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASSED" in done.stdout, done.stdout  # twine's verdict on each file
    return Release(
        folder,
        sdist=folder / f"forwarder-{VERSION}.tar.gz",
        wheel=folder / f"forwarder-{VERSION}-py3-none-any.whl",
        # Helm names a chart's package <name>-<chart version>.tgz.
        chart=next(folder.glob("forwarder-*.tgz")),
    )


def wheel_digest(wheel: Path) -> str:
    """A digest of the wheel's members (names and bytes), not of the archive, whose
    timestamps change with every build."""
    digest = hashlib.sha256(f"{sys.version_info[:3]}".encode())
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            digest.update(name.encode() + b"\0" + archive.read(name) + b"\0")
    return digest.hexdigest()[:16]


def venv_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "forwarder" / "wheel-venv"


def install_wheel(wheel: Path) -> Path:
    """A virtualenv holding ``wheel`` and its dependencies, as the image's build stage makes
    it (``python -m venv``, then ``pip install`` of the wheel file), from the cache if there.

    A virtualenv cannot be moved (its scripts name its path), so it is made in place and marked
    complete last; a folder without the mark is an interrupted install and is made again."""
    venv = venv_cache() / wheel_digest(wheel)
    if (venv / COMPLETE).exists():
        return venv
    if venv.parent.exists():
        for old in venv.parent.iterdir():
            shutil.rmtree(old)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", wheel],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        # pip's own cache is used: only a changed dependency is downloaded again.
        cwd=venv,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    (venv / COMPLETE).touch()
    return venv


@dataclass(frozen=True)
class WheelVenv:
    """The installed wheel, and how to run its commands as the image runs them."""

    path: Path
    workdir: Path

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """The venv's scripts first on PATH, no PYTHONPATH, no FORWARDER_* settings of ours."""
        env = {
            "PATH": f"{self.bin}{os.pathsep}/usr/bin:/bin",
            "HOME": str(self.workdir),
            "LANG": "C.UTF-8",
        }
        return env | IMAGE_ENV | extra

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
