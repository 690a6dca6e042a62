"""The Helm chart installed into the test control plane, and its objects as the apiserver keeps them.

:func:`installed` runs ``helm install`` through Helm's own SDK (helm-python-sdk) as the
control plane's admin, the way a cluster admin installs the chart, and ``helm uninstall`` at
the end. It never waits: without a kubelet no pod runs, so ``--wait`` would never succeed.
The processes the tests then run with the release's ServiceAccounts get tokens from a
TokenRequest, never the admin's.

Objects are named by :class:`Ref` (kind, namespace, name) and read back with the real kubectl,
so a test compares what Helm rendered with what the apiserver admitted and kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import helm_python as helm
import yaml

from support.chart import CHART, Rendered
from support.controlplane import ControlPlane

# What an install or upgrade may take: Helm only creates objects, it waits for nothing.
HELM_TIMEOUT = 120


class Ref(NamedTuple):
    """One object: its kind, its apiVersion's group, its namespace (None when cluster-scoped)
    and its name."""

    kind: str
    group: str
    namespace: str | None
    name: str

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Ref:
        """The object's Ref (the chart names the namespace of every namespaced object)."""
        api_version = str(obj["apiVersion"])
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        meta = obj["metadata"]
        return cls(obj["kind"], group, meta.get("namespace"), meta["name"])

    @property
    def resource(self) -> str:
        """``kind.group/name``, which kubectl resolves without ambiguity."""
        kind = f"{self.kind.lower()}.{self.group}" if self.group else self.kind.lower()
        return f"{kind}/{self.name}"

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


def manifest_objects(manifest: str) -> list[dict[str, Any]]:
    """The objects of a release's manifest (Helm's rendered templates, hooks and CRDs aside)."""
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def live_objects(plane: ControlPlane, refs: Iterable[Ref]) -> dict[Ref, dict[str, Any]]:
    """Those of ``refs`` that exist, as the apiserver returns them (one kubectl call per
    namespace, as admin)."""
    by_namespace: dict[str | None, list[Ref]] = {}
    for ref in refs:
        by_namespace.setdefault(ref.namespace, []).append(ref)
    found: dict[Ref, dict[str, Any]] = {}
    for namespace, group in by_namespace.items():
        scope = ["-n", namespace] if namespace else []
        reply = plane.kubectl(
            "get", *scope, *[ref.resource for ref in group], "--ignore-not-found", "-o", "json"
        )
        if not reply.stdout.strip():
            continue
        document = json.loads(reply.stdout)
        items = document["items"] if document.get("kind") == "List" else [document]
        for item in items:
            found[Ref.of(item)] = item
    return found


@dataclass
class Release:
    """A release of charts/forwarder in the control plane."""

    plane: ControlPlane
    config: helm.Config
    name: str
    namespace: str
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def fullname(self) -> str:
        """The prefix of the release's object names (the chart's ``forwarder.fullname``)."""
        return self.name if "forwarder" in self.name else f"{self.name}-forwarder"

    def account(self, component: str) -> str:
        """The ServiceAccount of a component (``operator``, ``api``...)."""
        return f"{self.fullname}-{component}"

    def kubeconfig(self, component: str) -> Path:
        """A kubeconfig holding a fresh TokenRequest token of the component's ServiceAccount:
        what its pod would mount, for a process run outside the cluster."""
        return self.plane.service_account_kubeconfig(self.namespace, self.account(component))

    def objects(self) -> list[dict[str, Any]]:
        """The objects of the current revision's manifest."""
        return manifest_objects(str(self.summary["manifest"]))

    def refs(self) -> list[Ref]:
        return [Ref.of(obj) for obj in self.objects()]

    def live(self) -> dict[Ref, dict[str, Any]]:
        """The current revision's objects that exist in the apiserver."""
        return live_objects(self.plane, self.refs())

    def rendered_live(self) -> Rendered:
        """The release's objects in its own namespace as the apiserver keeps them, in the
        shape of an offline render: what a kubelet would build the pods' env from."""
        objects = [obj for ref, obj in self.live().items() if ref.namespace == self.namespace]
        return Rendered(objects, notes="")

    def upgrade(self, values: dict[str, Any]) -> dict[str, Any]:
        """``helm upgrade`` to ``values`` (not reusing the previous ones), without waiting."""
        self.summary = self.config.upgrade(str(CHART), self.name, values, timeout=HELM_TIMEOUT)
        return self.summary


@contextmanager
def installed(
    plane: ControlPlane, namespace: str, name: str, values: dict[str, Any] | None = None
) -> Iterator[Release]:
    """``helm install`` the chart as release ``name`` in ``namespace`` (which must exist);
    ``helm uninstall`` it afterwards unless the test did."""
    with helm.Config(kubeconfig_path=str(plane.admin_kubeconfig), namespace=namespace) as config:
        try:  # a failed install leaves a release and some objects behind too
            summary = config.install(str(CHART), name, values or {}, timeout=HELM_TIMEOUT)
            yield Release(plane, config, name, namespace, summary)
        finally:
            config.uninstall(name, ignore_not_found=True, timeout=HELM_TIMEOUT)
