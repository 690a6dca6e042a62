"""The factory: one Core per process, found through its Celery app by what Celery builds, and
a package that builds and patches nothing when imported."""

from __future__ import annotations

import subprocess
import sys

import pytest
from celery import Celery
from forwarder_worker import Core, Settings
from forwarder_worker.beat.scheduler import ForwarderScheduler
from forwarder_worker.core import core_of, require_core
from forwarder_worker.recording.result_backend import RecordingRedisBackend


def test_importing_the_package_builds_nothing_and_patches_nothing() -> None:
    # A fresh interpreter: this one has imported everything already.
    probe = """
import forwarder_worker
from celery import signals
from celery._state import _apps
from kombu.transport import redis as kombu_redis
print(len(list(_apps)), len(signals.task_received.receivers or []),
      hasattr(kombu_redis.Channel._connparams, "_forwarder_released_transport_fix"))
import forwarder_worker.app
print(len(list(_apps)), len(signals.task_received.receivers or []),
      hasattr(kombu_redis.Channel._connparams, "_forwarder_released_transport_fix"))
forwarder_worker.app.app.loader.import_default_modules()  # as a worker does as it starts
print(len(signals.task_received.receivers or []))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[0] == "0 0 False"  # no app, no receiver, no patch
    assert out[1] == "1 0 True"  # Celery's entry point builds the Core (and installs the fix)
    assert out[2] == "1"  # the worker imports the receivers with the task modules


def test_what_celery_builds_finds_the_core_through_the_app(redis_url: str) -> None:
    core = Core.from_settings(Settings(redis_url=redis_url))
    try:
        assert core.app.core is core
        assert require_core(core.app) is core
        assert isinstance(core.app.backend, RecordingRedisBackend)
        assert core_of(core.app.backend.app) is core
        # Beat takes its parts from the Core: one store, run log and dispatcher per process.
        beat = ForwarderScheduler(core.app, lazy=True)
        assert (beat.store, beat.runs, beat.dispatcher) == (core.store, core.runs, core.dispatcher)
        assert beat.client is core.client
    finally:
        core.close()


def test_an_app_the_factory_did_not_build_is_refused_by_name() -> None:
    plain = Celery("someone-else", set_as_current=False)
    assert core_of(plain) is None  # the receivers leave its tasks alone
    with pytest.raises(RuntimeError, match="is not a Forwarder app"):
        require_core(plain)
