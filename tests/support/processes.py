"""Real Forwarder processes (Celery worker, beat, the ``forwarder`` CLI) for tests.

Each process runs in its own process group with its output in a log file, and is stopped
with its whole group, so no test leaves a worker child or a valkey-server behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# A ping every second in default/steady, as a folder source reads it (steady.yaml): the fault
# suites watch its firings carry on across what they break.
STEADY_SCHEDULE = """\
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata:
  name: steady
spec:
  task: forwarder.ping
  schedule:
    every: 1s
"""


def forwarder_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """Environment for a Forwarder process against ``redis_url``, with test task modules."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORWARDER_")}
    env.update(
        FORWARDER_REDIS_URL=redis_url,
        FORWARDER_TASK_MODULES="support.sample_tasks",
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


class Proc:
    """A started process with its log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path, name: str) -> None:
        self.popen = popen
        self.log = log
        self.name = name

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the group, wait, then SIGKILL whatever is left of it."""
        if self.alive():
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.signal(signal.SIGKILL)  # children that outlived their parent
        try:
            return self.popen.wait(5)
        except subprocess.TimeoutExpired:
            return None


def start(args: list[str], env: dict[str, str], log: Path, name: str) -> Proc:
    """Start ``args`` in a new process group, logging to ``log``."""
    handle = log.open("ab")
    popen = subprocess.Popen(
        args,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=str(REPO),
    )
    handle.close()
    return Proc(popen, log, name)


def celery_worker(
    env: dict[str, str],
    log: Path,
    *,
    concurrency: int = 2,
    queues: str = "default",
    name: str = "worker",
) -> Proc:
    return start(
        [
            str(BIN / "celery"),
            "-A",
            "forwarder_worker.app",
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            "-Q",
            queues,
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h",
        ],
        env,
        log,
        name,
    )


def celery_beat(env: dict[str, str], log: Path, name: str = "beat") -> Proc:
    return start(
        [
            str(BIN / "celery"),
            "-A",
            "forwarder_worker.app",
            "beat",
            "--loglevel=INFO",
            "-S",
            "forwarder_worker.beat.scheduler:ForwarderScheduler",
        ],
        env,
        log,
        name,
    )


@contextmanager
def running(*procs: Proc) -> Iterator[tuple[Proc, ...]]:
    """Stop every process on exit, and show their logs if the test failed."""
    try:
        yield procs
    except BaseException:
        for proc in procs:
            sys.stderr.write(f"----- {proc.name} log -----\n{proc.output()[-6000:]}\n")
        raise
    finally:
        for proc in procs:
            proc.stop()


def eventually(
    check: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{message} not met within {timeout}s (last: {last!r})")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces; the fields after its ')' are fixed.
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive_pids(pids: set[int]) -> set[int]:
    """Those of ``pids`` that are still running (zombies count as gone)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive
