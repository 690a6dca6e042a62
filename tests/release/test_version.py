"""One version, pyproject.toml's, everywhere a release shows it: the installed distribution
(``forwarder --version``, the API's OpenAPI document), the chart's appVersion, the image's
label and build argument (test_image.py), and a CHANGELOG.md section."""

from __future__ import annotations

import re

import pytest
import yaml
from forwarder_worker import __version__
from forwarder_worker.local.cli import main
from support.chart import CHART, REPO
from support.release import VERSION


def test_the_code_reads_pyprojects_version() -> None:
    assert __version__ == VERSION


def test_forwarder_version_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"forwarder {VERSION}"


def test_the_charts_app_version_is_it() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == VERSION


def test_the_changelog_has_a_section_for_it() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert "[Keep a Changelog](https://keepachangelog.com/en/1.1.0/)" in changelog
    assert re.search(rf"^## \[{re.escape(VERSION)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M)
    assert re.search(r"^## \[Unreleased\]$", changelog, re.M)
