"""Fixtures of the release suite: ``make dist``'s artifacts, once per session, and its wheel
installed alone into a (cached) virtualenv, used from an empty folder
(:mod:`support.release`)."""

from __future__ import annotations

import pytest
from support.release import Release, WheelVenv, install_wheel, make_dist


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    return make_dist(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def wheel_venv(release: Release, tmp_path_factory: pytest.TempPathFactory) -> WheelVenv:
    return WheelVenv(install_wheel(release.wheel), tmp_path_factory.mktemp("elsewhere"))
