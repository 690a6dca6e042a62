"""Fixtures of the chart suite: the loaded chart, and the chart rendered per CI scenario."""

from __future__ import annotations

from collections.abc import Iterator

import helm_python as helm
import pytest
from support.chart import CHART, SCENARIOS, Rendered, load_values, render


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    loaded = helm.Chart.load(CHART)
    yield loaded
    loaded.close()


@pytest.fixture(params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


_renders: dict[str, Rendered] = {}


@pytest.fixture
def rendered(chart: helm.Chart, scenario: str) -> Rendered:
    """The scenario's render, made once per session (tests only read it)."""
    if scenario not in _renders:
        _renders[scenario] = render(chart, load_values(scenario))
    return _renders[scenario]
