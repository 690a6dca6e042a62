"""Fixtures for the scheduler suite: real beat and worker processes on an embedded Redis.

``harness`` gives each test its own Redis, a way to start beats and workers (stopped at the
end, their logs printed when the test fails) and readers for entries, run records and
metrics. Every assertion goes through what a user sees: run records and the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from support.processes import Proc, eventually
from support.redis_server import client_for, embedded_redis
from support.scheduler_harness import PREFIX, Harness


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember the outcome, so fixtures can print process logs for failed tests only.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


@pytest.fixture
def harness(
    redis_url: str, rclient: redis.Redis, logs: Path, request: pytest.FixtureRequest
) -> Iterator[Harness]:
    h = Harness(redis_url, rclient, logs)
    yield h
    h.stop_all(_failed(request))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """A Redis and a worker shared by a module's tests (a worker takes seconds to start).

    Tests using it clean up their entries and start their own beats with ``beat_of``.
    """
    logs = tmp_path_factory.mktemp("shared-logs")
    with embedded_redis() as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        client = client_for(url)
        h = Harness(url, client, logs)
        worker = h.worker("shared-worker", concurrency=3)
        try:
            eventually(lambda: "ready." in worker.output(), 60, 0.1, "worker ready")
            yield h
        finally:
            h.stop_all(failed=False)
            client.close()


@pytest.fixture
def beat_of(shared: Harness, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start beats on the shared Redis; stops them and deletes every entry afterwards."""
    started: list[Proc] = []

    def start(name: str = "beat", **overrides: str) -> Proc:
        proc = shared.beat(name, **overrides)
        shared.procs.remove(proc)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
        if _failed(request):
            print(f"----- {proc.name} log -----\n{proc.output()[-6000:]}")
    for name in shared.store.names():
        shared.store.delete(name)
    # Wait out anything still queued or running, so the next test starts clean.
    eventually(
        lambda: shared.client.llen(f"{PREFIX}default") == 0, 30, 0.1, "default queue drained"
    )
