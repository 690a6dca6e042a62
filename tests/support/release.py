"""The release suite's parts: the artifacts ``make dist`` builds, and a virtualenv with only
the wheel installed, used from a folder that holds no source tree.

Installing the wheel's dependencies takes about half a minute even from pip's cache, so the
virtualenv is kept under ``~/.cache/forwarder/wheel-venv/<digest>/`` (``$XDG_CACHE_HOME`` is
honoured), keyed by the wheel's requirements and the Python version; the wheel itself is
installed into it again on every use (:func:`installed_wheel`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
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


def requirements_digest(wheel: Path) -> str:
    """A digest of what the wheel's dependencies depend on: its Requires-Dist and
    Requires-Python lines, and this Python's version. The code and the README are left out,
    so only a dependency change makes a new virtualenv."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode().split("\n\n", 1)[0]
    lines = [line for line in headers.splitlines() if line.startswith("Requires-")]
    text = "\n".join([f"{sys.version_info[:3]}", *sorted(lines)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def venv_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "forwarder" / "wheel-venv"


def _pip(venv: Path, *args: str) -> None:
    done = subprocess.run(
        [str(venv / "bin" / "pip"), *args, "--quiet", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=venv,  # never the source tree
    )
    assert done.returncode == 0, f"pip {args[0]}: {done.stdout[-2000:]}{done.stderr[-3000:]}"


@contextmanager
def installed_wheel(wheel: Path) -> Iterator[Path]:
    """A virtualenv holding ``wheel`` and its dependencies, made as the image's build stage
    makes it (``python -m venv``, then ``pip install`` of the wheel file, with pip's cache).

    The virtualenv is kept per :func:`requirements_digest` (a virtualenv cannot be moved: its
    scripts name its path, so it is made in place and marked complete last). Each use installs
    this wheel into it again, without touching its dependencies, and ``pip check`` confirms
    they satisfy the wheel. An exclusive lock is held while the virtualenv is in use, so two
    test sessions never install into one another's; folders of other digests unused for a
    week are removed."""
    cache = venv_cache()
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / requirements_digest(wheel)
    with (cache / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / COMPLETE).exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
            _pip(venv, "install", str(wheel))
            (venv / COMPLETE).touch()
        else:
            _pip(venv, "install", "--no-deps", "--force-reinstall", str(wheel))
        _pip(venv, "check")
        os.utime(venv)  # its last use, for the pruning below
        week_ago = time.time() - 7 * 24 * 3600
        for other in cache.iterdir():
            if other.is_dir() and other != venv and other.stat().st_mtime < week_ago:
                shutil.rmtree(other, ignore_errors=True)
        yield venv


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
