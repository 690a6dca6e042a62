"""Redis with a password (``requirepass``): every component connects when given it, and
without it (or with a wrong one) each stops with one clear line instead of a traceback storm.

Components with the password: ``forwarder worker``, ``forwarder beat``, ``forwarder flower``,
``forwarder api``, the folder source and ``forwarder status``; a schedule fires end to end,
Flower sees the worker and the API is ready and lists the runs; ``forwarder operator``, on the
real API server as its own ServiceAccount, stores a ScheduledTask's entry and marks it Ready.
Without it: ``forwarder worker|beat|flower|api|operator|folder``, ``forwarder status`` and
``forwarder up --redis-url`` exit at once with one line naming the setting to fix. Processes
that wait for Redis by design (the folder source run as a module, as ``forwarder up`` runs
it, and ``celery worker`` run directly as the chart does) log the refusal in one line per attempt, with no traceback.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from forwarder_worker import Core, Settings
from support.components import check_every_component, forwarder
from support.operator_process import operator_env, running_operator
from support.processes import BIN, eventually, forwarder_env, running, start
from support.scheduled_tasks import ScheduledTasks
from support.valkey_process import ValkeyProcess, valkey

PASSWORD = "s3cret-for-tests"
SCHEDULE = """\
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata:
  name: guarded
spec:
  task: forwarder.ping
  schedule:
    every: 1s
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ValkeyProcess]:
    with valkey(tmp_path / "redis", password=PASSWORD) as started:
        yield started


@pytest.mark.slow
def test_every_component_connects_with_the_password(
    server: ValkeyProcess, tmp_path: Path, logs: Path
) -> None:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "guarded.yaml").write_text(SCHEDULE)
    env = forwarder_env(server.url, FORWARDER_REDIS_PASSWORD=PASSWORD, FLOWER_BASIC_AUTH="admin:pw")
    core = Core.from_settings(Settings(redis_url=server.url, redis_password=PASSWORD))
    check_every_component(env, core, folder, logs, schedule="default/guarded", worker="pw")
    core.close()


@pytest.mark.slow
@pytest.mark.cluster
def test_operator_connects_with_the_password(
    server: ValkeyProcess,
    scheduled_tasks: ScheduledTasks,
    operator_kubeconfig: Path,
    logs: Path,
) -> None:
    kube, namespace = scheduled_tasks, scheduled_tasks.namespace
    core = Core.from_settings(Settings(redis_url=server.url, redis_password=PASSWORD))
    store = core.store
    env = operator_env(
        server.url, operator_kubeconfig, [namespace], FORWARDER_REDIS_PASSWORD=PASSWORD
    )
    with running_operator(env, logs / "operator.log", via="cli") as operator:
        kube.create("guarded", {"task": "forwarder.ping", "schedule": {"every": "1h"}})
        eventually(lambda: store.get(f"{namespace}/guarded") is not None, 60, message="entry")
        eventually(lambda: kube.ready("guarded").get("status") == "True", 60, message="Ready=True")
        assert operator.alive()
        assert "Authentication required" not in operator.output()
    core.close()


def _one_line_failure(args: list[str], env: dict[str, str], *, says: str) -> None:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (args, done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, (args, done.stderr)
    assert "refused the connection" in lines[0] and says in lines[0], lines[0]
    assert PASSWORD not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_without_the_password_each_component_stops_with_one_line(
    server: ValkeyProcess, tmp_path: Path
) -> None:
    missing = forwarder_env(server.url, FLOWER_BASIC_AUTH="admin:pw")
    wrong = forwarder_env(
        server.url, FORWARDER_REDIS_PASSWORD="not-it", FLOWER_BASIC_AUTH="admin:pw"
    )
    for component in ("worker", "beat", "flower", "api", "operator", "folder"):
        _one_line_failure(forwarder(component), missing, says="set FORWARDER_REDIS_PASSWORD")
    # A wrong password is caught by the same check (one component is enough to show it).
    _one_line_failure(forwarder("beat"), wrong, says="check FORWARDER_REDIS_PASSWORD")
    folder = tmp_path / "schedules"
    folder.mkdir()
    _one_line_failure(
        forwarder(
            "up",
            "--redis-url",
            server.url,
            "--schedules",
            str(folder),
            "--state-dir",
            str(tmp_path / "state"),
        ),
        missing,
        says="set FORWARDER_REDIS_PASSWORD",
    )
    status = subprocess.run(
        forwarder("status"), env=missing, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 1
    assert status.stderr.strip().count("\n") == 0 and "Authentication required" in status.stderr


@pytest.mark.slow
def test_waiting_processes_log_the_refusal_without_tracebacks(
    server: ValkeyProcess, tmp_path: Path, logs: Path
) -> None:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "guarded.yaml").write_text(SCHEDULE)
    env = forwarder_env(server.url)
    source = start(
        [str(BIN / "python"), "-m", "forwarder_operator.folder", "--dir", str(folder)],
        env,
        logs / "folder.log",
        "folder",
    )
    # The chart runs `celery ... worker` directly: it retries, one line per attempt.
    worker = start(
        [str(BIN / "celery"), "-A", "forwarder_worker.app", "worker", "--concurrency=1"],
        env,
        logs / "worker.log",
        "worker",
    )
    with running(source, worker):
        eventually(
            lambda: "Authentication required" in source.output(), 60, message="folder refusal"
        )
        eventually(
            lambda: "Authentication required" in worker.output(), 60, message="worker refusal"
        )
        assert source.alive() and worker.alive()
        for proc in (source, worker):
            assert "Traceback" not in proc.output(), proc.output()[-3000:]
        refusals = [
            line for line in source.output().splitlines() if "Authentication required" in line
        ]
        assert len(refusals) == 1, refusals  # reported once, not on every pass
