"""Fixtures for the operator suite on the real control plane: ScheduledTasks as a user
drives them, and the environment of the real kopf operator, which always runs as its own
ServiceAccount (``operator_kubeconfig``), in a thread of the test process or as a
subprocess (:mod:`support.operator_process`, which also fails a test whose operator was
refused anything).

Each test has its own namespace (``namespace``) and its operator watches only that one,
unless the test asks for every namespace (``every_namespace`` in tests/conftest.py, the
default deployment).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from forwarder_worker.schedules.store import Entry
from support.operator_process import operator_env as make_operator_env
from support.scheduled_tasks import ScheduledTasks


@pytest.fixture
def kube(scheduled_tasks: ScheduledTasks) -> ScheduledTasks:
    """``scheduled_tasks`` (tests/conftest.py), by the short name this suite uses."""
    return scheduled_tasks


@pytest.fixture
def env_for(operator_kubeconfig: Path, namespace: str) -> Callable[..., dict[str, str]]:
    """``env_for(redis_url, namespaces=(this test's,))``: the environment of the operator
    (as its ServiceAccount), worker and beat; ``namespaces=()`` watches every namespace."""

    def make(redis_url: str, namespaces: Sequence[str] = (namespace,)) -> dict[str, str]:
        return make_operator_env(redis_url, operator_kubeconfig, namespaces)

    return make


@pytest.fixture
def operator_env(redis_url: str, env_for: Callable[..., dict[str, str]]) -> dict[str, str]:
    """Environment of every Forwarder process of a test (worker, beat, operator), watching
    this test's namespace."""
    return env_for(redis_url)


@pytest.fixture
def entry_of(rclient: Any) -> Callable[[str], dict[str, Any] | None]:
    """The stored schedule entry ``<namespace>/<name>`` as a dict, or None: read as the
    store reads it (the stored definition leaves out fields at their defaults)."""

    def read(name: str) -> dict[str, Any] | None:
        definition = rclient.hget(f"forwarder:{name}", "definition")
        return None if definition is None else dict(vars(Entry.from_json(definition)))

    return read
