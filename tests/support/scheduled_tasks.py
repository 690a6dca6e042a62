"""ScheduledTasks and their Events on the test control plane, over plain HTTP: what a user's
client library sends.

This is the tests' side of the API server, with the admin credentials of
:meth:`support.controlplane.ControlPlane.http` (setting up and changing resources as a user
would); the operator under test never uses it (:mod:`support.operator_process`).

Namespaces are never deleted on the test control plane (no controller manager), so whatever
a test leaves there stays for the session, and an operator that watches every namespace
would reconcile it. :meth:`ScheduledTasks.remove_all` (each test's teardown) and
:func:`remove_scheduled_tasks` (before a cluster-wide operator starts) delete them, taking
the finalizer off when no operator is left to release it.

:func:`kubectl_apply` and :func:`kubectl_get` do the same through the real kubectl, as a user
at a terminal would.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml
from forwarder_worker.names import FINALIZER

from support.processes import eventually

if TYPE_CHECKING:
    from support.controlplane import ControlPlane

GROUP_VERSION = "forwarder.dev/v1alpha1"
API = f"/apis/{GROUP_VERSION}"
MERGE = {"Content-Type": "application/merge-patch+json"}
FINALIZER_POLICY = (
    Path(__file__).resolve().parents[2] / "manifests" / "admission" / "finalizer_policy.yaml"
)


def tasks_path(namespace: str | None, name: str = "") -> str:
    """The URL path of ScheduledTasks in ``namespace`` (every namespace when None)."""
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"{API}{where}/scheduledtasks" + (f"/{name}" if name else "")


def remove_scheduled_tasks(http: httpx.Client, namespace: str | None = None) -> None:
    """Delete every ScheduledTask in ``namespace`` (every namespace when None) and wait until
    they are gone. Each is deleted first and its finalizers taken off after: a running
    operator cannot put a finalizer back on an object being deleted, and without a running
    operator nothing else would release it."""
    reply = http.get(tasks_path(namespace))
    reply.raise_for_status()
    for item in reply.json()["items"]:
        path = tasks_path(item["metadata"]["namespace"], item["metadata"]["name"])
        deleted = http.delete(path)
        assert deleted.status_code in (200, 202, 404), deleted.text
        stripped = http.patch(path, json={"metadata": {"finalizers": None}}, headers=MERGE)
        assert stripped.status_code in (200, 404), stripped.text
    eventually(
        lambda: not http.get(tasks_path(namespace)).json()["items"],
        30,
        0.2,
        message=f"every ScheduledTask in {namespace or 'the cluster'} gone",
    )


class ScheduledTasks:
    """ScheduledTasks in ``namespace`` (or another one named per call), and their Events."""

    def __init__(self, http: httpx.Client, namespace: str) -> None:
        self.http = http
        self.namespace = namespace
        self.touched: set[str] = set()

    def path(self, namespace: str | None = None, name: str = "") -> str:
        return tasks_path(namespace or self.namespace, name)

    def post(
        self,
        name: str,
        spec: Any,
        namespace: str | None = None,
        annotations: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST a ScheduledTask and return the API server's answer, whatever it is."""
        namespace = namespace or self.namespace
        self.touched.add(namespace)
        body = {
            "apiVersion": GROUP_VERSION,
            "kind": "ScheduledTask",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": spec,
        }
        return self.http.post(self.path(namespace), json=body)

    def create(
        self,
        name: str,
        spec: dict[str, Any],
        namespace: str | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Create a ScheduledTask the API server must admit; the stored object."""
        reply = self.post(name, spec, namespace, annotations)
        assert reply.status_code == 201, reply.text
        return dict(reply.json())

    def get(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        reply = self.http.get(self.path(namespace, name))
        if reply.status_code == 404:
            return None
        reply.raise_for_status()
        return dict(reply.json())

    def items(self, namespace: str | None = None) -> list[dict[str, Any]]:
        reply = self.http.get(self.path(namespace))
        reply.raise_for_status()
        return list(reply.json()["items"])

    def status(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        return dict((self.get(name, namespace) or {}).get("status") or {})

    def ready(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        """The Ready condition, or {}."""
        conditions = self.status(name, namespace).get("conditions") or []
        return next((dict(c) for c in conditions if c.get("type") == "Ready"), {})

    def patch(self, name: str, body: dict[str, Any], namespace: str | None = None) -> None:
        reply = self.http.patch(self.path(namespace, name), json=body, headers=MERGE)
        assert reply.status_code == 200, reply.text

    def delete(self, name: str, namespace: str | None = None) -> None:
        reply = self.http.delete(self.path(namespace, name))
        assert reply.status_code in (200, 202), reply.text

    def events(self, name: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The core/v1 Events about ScheduledTask ``name``."""
        reply = self.http.get(
            f"/api/v1/namespaces/{namespace or self.namespace}/events",
            params={"fieldSelector": f"involvedObject.name={name}"},
        )
        reply.raise_for_status()
        return list(reply.json()["items"])

    def warnings(self, name: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events(name, namespace) if e.get("type") == "Warning"]

    def remove_all(self) -> None:
        """Delete every ScheduledTask in the namespaces this client created some in."""
        for namespace in sorted(self.touched | {self.namespace}):
            remove_scheduled_tasks(self.http, namespace)


def kubectl_apply(plane: ControlPlane, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """``kubectl apply`` ScheduledTask ``namespace/name`` with ``spec``, as the admin."""
    document = {"apiVersion": GROUP_VERSION, "kind": "ScheduledTask", "metadata": {"name": name}}
    plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps({**document, "spec": spec}))


def kubectl_get(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    """ScheduledTask ``namespace/name`` as ``kubectl get -o json`` shows the admin, or None."""
    reply = plane.kubectl("get", "st", name, "-n", namespace, "-o", "json", "--ignore-not-found")
    found: dict[str, Any] | None = json.loads(reply.stdout) if reply.stdout.strip() else None
    return found


def admitted_with_finalizer(plane: ControlPlane, namespace: str) -> bool | None:
    """Whether a ScheduledTask created in ``namespace`` now gets the operator's finalizer at
    creation (manifests/admission's policy): a server-side dry-run create, which runs
    admission and stores nothing. None while the API server answers 503, as it did for a
    moment when the policy was applied right after the CRDs were established."""
    probe = {
        "apiVersion": GROUP_VERSION,
        "kind": "ScheduledTask",
        "metadata": {"name": "finalizer-policy-probe"},
        "spec": {"task": "forwarder.ping", "schedule": {"every": "1h"}},
    }
    with plane.http() as http:
        reply = http.post(f"{tasks_path(namespace)}?dryRun=All", json=probe)
    if reply.status_code == 503:
        return None
    assert reply.status_code == 201, reply.text
    return FINALIZER in (reply.json()["metadata"].get("finalizers") or ())


def apply_finalizer_policy(plane: ControlPlane, namespace: str | None = None) -> list[str]:
    """Apply manifests/admission (the operator's finalizer set at creation), its binding
    limited to ``namespace`` when given (and then named after it); returns the ``kind/name``
    of what to delete to undo it.

    The API server loads a new policy a moment after it is created: this returns once a
    create in ``namespace`` (``default`` when None) gets the finalizer."""
    policy, binding = yaml.safe_load_all(FINALIZER_POLICY.read_text())
    if namespace is not None:
        binding["metadata"]["name"] += f"-{namespace}"
        binding["spec"]["matchResources"] = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        }
    documents = json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy, binding]})
    plane.kubectl("apply", "-f", "-", stdin=documents)
    where = namespace or "default"
    eventually(
        lambda: admitted_with_finalizer(plane, where), 30, 0.2, message="the policy in force"
    )
    created = [f"mutatingadmissionpolicybinding/{binding['metadata']['name']}"]
    if namespace is None:
        created.append(f"mutatingadmissionpolicy/{policy['metadata']['name']}")
    return created


@contextlib.contextmanager
def finalizer_policy(plane: ControlPlane, namespace: str | None = None) -> Iterator[None]:
    """:func:`apply_finalizer_policy` until the block ends (the policy object itself stays
    when only a namespace's binding was made: other namespaces' bindings may use it)."""
    created = apply_finalizer_policy(plane, namespace)
    try:
        yield
    finally:
        plane.kubectl("delete", "--ignore-not-found", *created)
