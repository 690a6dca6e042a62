"""Fixtures of the release suite: ``make dist``'s artifacts, once per session, and its wheel
installed alone into a virtualenv (its dependencies cached), used from an empty folder
(:mod:`support.release`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.release import Release, WheelVenv, installed_wheel, make_dist


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    return make_dist(tmp_path_factory.mktemp("dist"))


# Per module: the virtualenv's lock is held only while test_artifacts.py uses it.
@pytest.fixture(scope="module")
def wheel_venv(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WheelVenv]:
    with installed_wheel(release.wheel) as venv:
        yield WheelVenv(venv, tmp_path_factory.mktemp("elsewhere"))
