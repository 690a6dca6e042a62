"""A live Forwarder stack for the API tests, started once per session and shared; and the chart
installed in the real control plane for the cluster backend's tests.

Real processes only (support.stack): an embedded Redis, a Celery worker, beat, Flower, local
mode's folder source and the API itself, all against the same Redis. Tests use distinct task
ids and schedule names, so they can share it.

The cluster backend's tests get charts/forwarder installed by Helm into the control plane
(``chart_release``, ``scoped_release``, in tests/conftest.py): the api and the operator then
authenticate with tokens of the chart's own ServiceAccounts and hold exactly the chart's RBAC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from support.processes import eventually
from support.stack import Stack, running_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


FINAL = {"SUCCESS", "FAILURE", "REVOKED", "SKIPPED"}


@pytest.fixture
def wait_run(api: httpx.Client) -> Callable[..., dict[str, Any]]:
    """Poll GET /runs/{id} until the run is in one of ``states`` (default: final)."""

    def wait(run_id: str, states: set[str] = FINAL, timeout: float = 60) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            body: dict[str, Any] = api.get(f"/runs/{run_id}").json()
            return body if body.get("state") in states else None

        result: dict[str, Any] = eventually(reached, timeout, 0.1, f"run {run_id} in {states}")
        return result

    return wait
