"""The check every operator test relies on: an operator the API server refuses anything
fails its test, even when kopf carries on regardless.

Every other operator test runs the operator as ``forwarder/forwarder-operator``, bound only
by manifests/rbac, and passes only if nothing it asked was refused
(:mod:`support.operator_process`). Here it runs as an account with everything it needs but
Events: kopf's post of an invalid spec's Warning Event is refused, kopf logs that and
carries on (the resource still gets Ready=False), and the check still fails the run, for the
subprocess and the in-thread operator alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from support.controlplane import ControlPlane
from support.operator_process import (
    operator_env,
    operator_in_thread,
    refusals,
    running_operator,
)
from support.processes import eventually

pytestmark = pytest.mark.cluster

BROKEN = {"task": "forwarder.ping", "schedule": {"cron": "61 * * * *"}}

NO_EVENTS = """
apiVersion: v1
kind: ServiceAccount
metadata: {{name: no-events, namespace: {namespace}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: no-events, namespace: {namespace}}}
rules:
  - apiGroups: [forwarder.dev]
    resources: [scheduledtasks]
    verbs: [get, list, watch, patch]
  - apiGroups: [forwarder.dev]
    resources: [scheduledtasks/status]
    verbs: [get, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: no-events, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: no-events}}
subjects: [{{kind: ServiceAccount, name: no-events, namespace: {namespace}}}]
---
# kopf's cluster-wide reads, as manifests/rbac grants them.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {namespace}-no-events}}
rules:
  - apiGroups: [apiextensions.k8s.io]
    resources: [customresourcedefinitions]
    verbs: [get, list, watch]
  - apiGroups: [""]
    resources: [namespaces]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {namespace}-no-events}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {namespace}-no-events}}
subjects: [{{kind: ServiceAccount, name: no-events, namespace: {namespace}}}]
"""


@pytest.fixture
def no_events_env(crds: ControlPlane, namespace: str, redis_url: str) -> Iterator[dict[str, str]]:
    """An operator environment whose account may do everything the operator does in this
    namespace except post Events."""
    manifest = NO_EVENTS.format(namespace=namespace)
    crds.kubectl("apply", "-f", "-", stdin=manifest)
    kubeconfig = crds.service_account_kubeconfig(namespace, "no-events")
    yield operator_env(redis_url, kubeconfig, [namespace])
    crds.kubectl("delete", "-f", "-", stdin=manifest)


def report_broken(kube: Any, operator: AbstractContextManager[Any]) -> None:
    """Run ``operator`` until it has reported an invalid spec and tried to post its Event:
    it works, refused or not."""
    with operator as running:
        kube.create("broken", BROKEN)
        eventually(lambda: kube.ready("broken").get("reason") == "InvalidSpec", 30)
        # kopf posts Events from a queue of its own, after the handler: wait for its try.
        eventually(lambda: refusals(running.output()), 30, message="the Event's post")
        assert not kube.warnings("broken")


def test_a_refused_subprocess_operator_fails_its_test(
    kube: Any, no_events_env: dict[str, str], logs: Path
) -> None:
    with pytest.raises(AssertionError, match="refused by the API server") as failed:
        report_broken(kube, running_operator(no_events_env, logs / "operator.log"))
    assert 'cannot create resource "events"' in str(failed.value)


def test_a_refused_in_thread_operator_fails_its_test(
    kube: Any, no_events_env: dict[str, str]
) -> None:
    with pytest.raises(AssertionError, match="refused by the API server") as failed:
        report_broken(kube, operator_in_thread(no_events_env))
    assert 'cannot create resource "events"' in str(failed.value)
