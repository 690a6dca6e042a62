"""``forwarder up`` with a temporary schedules folder, run as a user runs it.

Adding, changing, deleting and corrupting a file each take effect (or are reported) within
about a second, the other schedules keep running, and stopping ``up`` leaves no process
behind, valkey-server included.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from forwarder_worker import Core, Settings
from support.processes import (
    BIN,
    Proc,
    alive_pids,
    descendants,
    eventually,
    forwarder_env,
    free_port,
    start,
)

PING = """\
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata:
  name: {name}
spec:
  task: forwarder.ping
  schedule:
    every: {every}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "schedules"
    path.mkdir()
    (path / "steady.yaml").write_text(PING.format(name="steady", every="1s"))
    return path


@pytest.fixture
def up(folder: Path, tmp_path: Path) -> Iterator[Proc]:
    env = forwarder_env("redis://unused")
    del env["FORWARDER_REDIS_URL"]
    proc = start(
        [
            str(BIN / "forwarder"),
            "up",
            "--schedules",
            str(folder),
            "--state-dir",
            str(tmp_path / "state"),
            "--flower-port",
            str(free_port()),
            "--api-port",
            str(free_port()),
        ],
        env,
        tmp_path / "up.log",
        "up",
    )
    try:
        eventually(lambda: (tmp_path / "state" / "redis-url").exists(), 30, message="redis up")
        yield proc
    except BaseException:
        sys.stderr.write(proc.output()[-8000:])
        raise
    finally:
        proc.stop()


def connect(tmp_path: Path) -> Core:
    url = (tmp_path / "state" / "redis-url").read_text().strip()
    return Core.from_settings(Settings(redis_url=url))


def test_up_follows_the_folder_and_stops_cleanly(up: Proc, folder: Path, tmp_path: Path) -> None:
    core = connect(tmp_path)
    store, runs = core.store, core.runs
    eventually(
        lambda: runs.summary("default/steady").succeeded >= 2, 60, message="the steady schedule ran"
    )

    # Add a file: it is scheduled within about a second.
    (folder / "added.yaml").write_text(PING.format(name="added", every="1h"))
    eventually(lambda: store.get("default/added"), 5, message="added file scheduled")

    # Change it: the entry follows.
    (folder / "added.yaml").write_text(PING.format(name="added", every="2h"))
    eventually(
        lambda: (s := store.get("default/added")) and s.entry.schedule == {"every": 7200},
        5,
        message="changed file applied",
    )

    # Corrupt it: reported with its path and reason; its last valid entry and the rest stay.
    (folder / "added.yaml").write_text("spec: [unclosed\n")
    eventually(
        lambda: "added.yaml: skipped: is not valid YAML" in up.output(),
        5,
        message="corrupt file reported",
    )
    (folder / "invalid.yaml").write_text(
        PING.format(name="invalid", every="1s").replace("every: 1s", "cron: '99 * * * *'")
    )
    eventually(
        lambda: "spec.schedule.cron: '99 * * * *' is not a valid cron expression" in up.output(),
        5,
        message="invalid spec reported",
    )
    assert store.get("default/invalid") is None
    assert store.get("default/added") is not None
    before = runs.summary("default/steady").total
    eventually(
        lambda: runs.summary("default/steady").total >= before + 2,
        10,
        message="steady keeps running",
    )

    # `forwarder status` shows the schedules and their runs.
    status = subprocess.run(
        [str(BIN / "forwarder"), "status", "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = status.splitlines()
    steady = next(line for line in lines if line.startswith("default/steady"))
    assert "forwarder.ping" in steady
    assert "every 1s" in steady
    # ...and the recent runs below it, with their states.
    assert any("default/steady" in line and "SUCCESS" in line for line in lines[2:])

    # Delete the file: its schedule is removed.
    (folder / "added.yaml").unlink()
    eventually(lambda: store.get("default/added") is None, 5, message="deleted file removed")
    core.close()

    # SIGTERM (as Ctrl-C does with SIGINT) stops every child and the embedded Redis.
    family = descendants(up.pid)
    assert len(family) >= 5, "worker, beat, flower, folder source and valkey-server"
    up.popen.send_signal(signal.SIGTERM)
    assert up.popen.wait(60) == 0
    eventually(lambda: not alive_pids(family), 10, message="no process left behind")
    assert "stopped" in up.output()


def test_up_refuses_a_missing_folder(tmp_path: Path) -> None:
    env = forwarder_env("redis://unused")
    proc = start(
        [
            str(BIN / "forwarder"),
            "up",
            "--schedules",
            str(tmp_path / "nope"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        env,
        tmp_path / "up.log",
        "up",
    )
    assert proc.popen.wait(60) == 2
    assert proc.output().strip().endswith("does not exist")
