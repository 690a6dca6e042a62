"""The operator as a real subprocess against the Kubernetes emulator, for the fault suites."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx

from support.processes import Proc, start

API = "/apis/forwarder.dev/v1alpha1/namespaces/default/scheduledtasks"
PROBE = "probe-"


def start_operator(env: dict[str, str], log: Path, name: str = "operator") -> Proc:
    """``python -m forwarder_operator`` (what ``forwarder operator`` runs)."""
    return start([sys.executable, "-m", "forwarder_operator"], env, log, name)


def ready_condition(kube: httpx.Client, name: str) -> dict[str, Any]:
    """The Ready condition of ScheduledTask ``default/name``, or {}."""
    item = kube.get(f"{API}/{name}").json()
    conditions = (item.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def wait_until_watching(kube: httpx.Client, tag: str = "") -> None:
    """Create probe resources (``probe-...``) until one gets Ready: the watch is then live.

    On the emulator, a resource created while the operator is still starting its watch can be
    missed for good (a real apiserver replays it from the list's resourceVersion), so tests
    create their own resources only once the operator is watching.
    """
    spec = {"task": "forwarder.ping", "schedule": {"every": "1h"}}
    for attempt in range(12):
        name = f"{PROBE}{tag}{attempt}"
        body = {"apiVersion": "forwarder.dev/v1alpha1", "kind": "ScheduledTask"}
        reply = kube.post(API, json={**body, "metadata": {"name": name}, "spec": spec})
        assert reply.status_code in (200, 201), reply.text
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if ready_condition(kube, name):
                return
            time.sleep(0.2)
    raise AssertionError("the operator handled no probe resource within a minute")
