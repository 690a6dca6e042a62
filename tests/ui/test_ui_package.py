"""The dashboard's files are package data: a wheel install serves every one of them."""

from __future__ import annotations

import fnmatch
import tomllib

import pytest
from forwarder_api.dashboard import UI_DIR
from support.processes import REPO

pytestmark = pytest.mark.ui


def test_every_dashboard_file_is_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["forwarder_api"]
    files = [p.relative_to(UI_DIR.parent).as_posix() for p in UI_DIR.rglob("*") if p.is_file()]
    assert "ui/index.html" in files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)]
    assert missing == [], f"add these to [tool.setuptools.package-data] forwarder_api: {missing}"
