"""Rendering the Helm chart with Helm's own engine (helm-python-sdk), per CI scenario.

Scenarios are the default values plus every ``charts/forwarder/ci/*-values.yaml`` file (the same
files ``ct lint`` would use), so adding a scenario file adds it to every test here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "forwarder"
RELEASE = "forwarder"
NAMESPACE = "forwarder"
SCENARIOS = {"default": CHART / "values.yaml"} | {
    path.name.removesuffix("-values.yaml"): path for path in sorted(CHART.glob("ci/*-values.yaml"))
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}


@dataclass
class Rendered:
    """Every object one render produced, parsed."""

    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        raise KeyError(f"no {kind} {name!r} rendered (have {self.names(kind)})")

    def names(self, kind: str) -> list[str]:
        return [obj["metadata"]["name"] for obj in self.of_kind(kind)]

    def pod_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(``Kind/name``, pod spec) of every workload, the helm test pod included."""
        for obj in self.objects:
            if obj["kind"] == "Pod":
                yield f"Pod/{obj['metadata']['name']}", obj["spec"]
            elif obj["kind"] in WORKLOAD_KINDS:
                yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def load_values(scenario: str) -> dict[str, Any]:
    """The values a scenario passes to Helm (empty for the defaults)."""
    if scenario == "default":
        return {}
    loaded = yaml.safe_load(SCENARIOS[scenario].read_text())
    assert isinstance(loaded, dict), f"{SCENARIOS[scenario]} is not a mapping"
    return loaded


def render(
    chart: helm.Chart,
    values: dict[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Rendered:
    """Render ``chart`` offline as release ``name`` (``forwarder``) in ``namespace``
    (``forwarder``)."""
    manifests = chart.render(values or {}, name=name, namespace=namespace)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                objects.append(doc)
    return Rendered(objects, notes)
