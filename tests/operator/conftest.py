"""Fixtures for the operator suite: the emulated cluster, a small API client, and the real
kopf operator either in a thread of the test process or as a subprocess."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import kopf
import pytest
from support.kube_emulator import ServedCluster, served_emulator
from support.processes import Proc, forwarder_env, start

API = "/apis/forwarder.dev/v1alpha1"

# Fast loops for tests; production defaults are 1 s and 60 s.
FAST = {
    "FORWARDER_OPERATOR_STATUS_INTERVAL": "0.3",
    "FORWARDER_OPERATOR_SWEEP_INTERVAL": "2",
    "FORWARDER_BEAT_MAX_LOOP_INTERVAL": "5",
}


class Kube:
    """ScheduledTasks and Events over plain HTTP: what a client library would send."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    def path(self, namespace: str, name: str = "") -> str:
        return f"{API}/namespaces/{namespace}/scheduledtasks" + (f"/{name}" if name else "")

    def create(
        self,
        name: str,
        spec: dict[str, Any],
        namespace: str = "default",
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body = {
            "apiVersion": "forwarder.dev/v1alpha1",
            "kind": "ScheduledTask",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": spec,
        }
        reply = self.http.post(self.path(namespace), json=body)
        assert reply.status_code == 201, reply.text
        return dict(reply.json())

    def create_namespace(self, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        reply = self.http.post("/api/v1/namespaces", json=body)
        assert reply.status_code == 201, reply.text

    def get(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        reply = self.http.get(self.path(namespace, name))
        if reply.status_code == 404:
            return None
        reply.raise_for_status()
        return dict(reply.json())

    def status(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return dict((self.get(name, namespace) or {}).get("status") or {})

    def ready(self, name: str, namespace: str = "default") -> dict[str, Any]:
        """The Ready condition, or {}."""
        conditions = self.status(name, namespace).get("conditions") or []
        return next((dict(c) for c in conditions if c.get("type") == "Ready"), {})

    def patch(self, name: str, body: dict[str, Any], namespace: str = "default") -> None:
        reply = self.http.patch(
            self.path(namespace, name),
            json=body,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert reply.status_code == 200, reply.text

    def delete(self, name: str, namespace: str = "default") -> None:
        reply = self.http.delete(self.path(namespace, name))
        assert reply.status_code in (200, 202), reply.text

    def events(self, name: str, namespace: str = "default") -> list[dict[str, Any]]:
        reply = self.http.get(
            f"/api/v1/namespaces/{namespace}/events",
            params={"fieldSelector": f"involvedObject.name={name}"},
        )
        reply.raise_for_status()
        return list(reply.json()["items"])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ServedCluster]:
    """The emulator as a server process on a free port, with a kubeconfig for it."""
    with served_emulator(tmp_path / "kube") as served:
        yield served


@pytest.fixture
def kube(cluster: ServedCluster) -> Iterator[Kube]:
    client = Kube(cluster.url)
    yield client
    client.http.close()


@pytest.fixture
def env_for(cluster: ServedCluster) -> Callable[[str], dict[str, str]]:
    """``env_for(redis_url)``: the environment of a Forwarder process in these tests."""

    def make(redis_url: str) -> dict[str, str]:
        return forwarder_env(redis_url, KUBECONFIG=str(cluster.kubeconfig), **FAST)

    return make


@pytest.fixture
def operator_env(redis_url: str, env_for: Callable[[str], dict[str, str]]) -> dict[str, str]:
    """Environment of every Forwarder process in these tests (worker, beat, operator)."""
    return env_for(redis_url)


@contextmanager
def operator_in_thread(env: dict[str, str]) -> Iterator[threading.Thread]:
    """The real kopf operator, in-process: ``kopf.operator()`` on its own loop in a thread.

    Handlers come from the default registry (importing forwarder_operator registers them),
    exactly as ``kopf run -m forwarder_operator`` would load them.
    """
    from forwarder_operator.settings import OperatorSettings
    from kubernetes.config import kube_config

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # The kubernetes client reads KUBECONFIG once, when imported; a process started with it
    # set (the real deployment) needs nothing like this.
    saved_location = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = env["KUBECONFIG"]
    config = OperatorSettings()
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(
                kopf.operator(
                    clusterwide=True,
                    standalone=True,
                    memo=kopf.Memo(config=config),
                    stop_flag=stop,
                    ready_flag=ready,
                )
            )
        except BaseException as exc:
            errors.append(exc)

    import forwarder_operator  # noqa: F401  (registers the handlers)

    thread = threading.Thread(target=main, name="kopf-operator", daemon=True)
    thread.start()
    try:
        assert ready.wait(30), f"the operator did not start: {errors}"
        yield thread
    finally:
        stop.set()
        thread.join(30)
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved_location
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert not thread.is_alive(), "the operator did not stop"
    assert not errors, errors


def operator_process(env: dict[str, str], log: Path, *args: str, via: str = "python") -> Proc:
    """The operator as a subprocess: ``forwarder operator`` (via="cli"), ``python -m
    forwarder_operator`` (what that command execs), or plain ``kopf run -m``."""
    commands = {
        "kopf": [sys.executable, "-m", "kopf", "run", "-m", "forwarder_operator"],
        "cli": [str(Path(sys.executable).parent / "forwarder"), "operator"],
        "python": [sys.executable, "-m", "forwarder_operator"],
    }
    return start([*commands[via], *args], env, log, f"operator({via})")


@pytest.fixture
def entry_of(rclient: Any) -> Callable[[str], dict[str, Any] | None]:
    """The stored schedule entry ``<namespace>/<name>`` as a dict, or None."""
    import json

    def read(name: str) -> dict[str, Any] | None:
        definition = rclient.hget(f"forwarder:{name}", "definition")
        return None if definition is None else dict(json.loads(definition))

    return read


@pytest.fixture
def in_process_operator() -> Callable[[dict[str, str]], Any]:
    """``with in_process_operator(env):`` runs the operator in a thread of this process."""
    return operator_in_thread


@pytest.fixture
def spawn_operator() -> Callable[..., Proc]:
    """``spawn_operator(env, log, *args, via="python"|"cli"|"kopf")`` starts a subprocess."""
    return operator_process
