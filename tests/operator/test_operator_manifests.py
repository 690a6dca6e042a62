"""The plain-YAML manifests kubectl users apply: valid Kubernetes objects, and RBAC that
grants the operator what it uses and nothing more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
CRD_PATH = MANIFESTS / "crds" / "forwarder.dev_scheduledtasks.yaml"
RBAC = MANIFESTS / "rbac"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def objects() -> list[tuple[str, dict[str, Any]]]:
    files = [CRD_PATH, *sorted(RBAC.glob("*.yaml"))]
    return [
        (f"{path.name}:{doc['kind']}", doc)
        for path in files
        if path.name != "kustomization.yaml"
        for doc in documents(path)
    ]


@pytest.mark.parametrize(("label", "document"), objects(), ids=[o[0] for o in objects()])
def test_manifest_is_a_valid_kubernetes_object(label: str, document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, "1.30", strict=True)


def rules(role: str) -> list[dict[str, Any]]:
    for _, doc in objects():
        if doc["kind"] == "ClusterRole" and doc["metadata"]["name"] == role:
            return list(doc["rules"])
    raise AssertionError(f"no ClusterRole {role}")


def grants(role: str) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules(role)
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_operator_role_is_least_privilege() -> None:
    granted = grants("forwarder-operator")
    needed = {
        ("forwarder.dev", "scheduledtasks", "list"),
        ("forwarder.dev", "scheduledtasks", "watch"),
        ("forwarder.dev", "scheduledtasks", "patch"),
        ("forwarder.dev", "scheduledtasks/status", "patch"),
        ("", "events", "create"),
    }
    assert needed <= granted
    assert not any("*" in grant for grant in granted)
    writable = {(g, r) for g, r, v in granted if v not in ("get", "list", "watch")}
    assert writable <= {
        ("forwarder.dev", "scheduledtasks"),
        ("forwarder.dev", "scheduledtasks/status"),
        ("", "events"),
        ("events.k8s.io", "events"),
    }
    assert not {r for _, r, _ in granted} & {"secrets", "pods", "configmaps"}
    assert ("forwarder.dev", "scheduledtasks", "delete") not in granted


def test_operator_binding_names_the_service_account() -> None:
    (account,) = documents(RBAC / "service_account.yaml")
    bindings = [doc for _, doc in objects() if doc["kind"] == "ClusterRoleBinding"]
    assert {b["roleRef"]["name"] for b in bindings} == {
        "forwarder-operator",
        "forwarder-operator-peering",
    }
    for binding in bindings:
        (subject,) = binding["subjects"]
        assert subject["name"] == account["metadata"]["name"]
        assert subject["namespace"] == account["metadata"]["namespace"]


def test_peering_role_covers_kopf_peering_only() -> None:
    assert {(g, r) for g, r, _ in grants("forwarder-operator-peering")} == {
        ("kopf.dev", "clusterkopfpeerings"),
        ("kopf.dev", "kopfpeerings"),
    }


def test_user_roles_aggregate_to_the_builtin_roles() -> None:
    labels = {
        doc["metadata"]["name"]: doc["metadata"]["labels"]
        for _, doc in objects()
        if doc["kind"] == "ClusterRole"
    }
    editor = labels["forwarder-scheduledtask-editor"]
    viewer = labels["forwarder-scheduledtask-viewer"]
    assert editor["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert editor["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert viewer["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert ("forwarder.dev", "scheduledtasks", "create") in grants("forwarder-scheduledtask-editor")
    assert ("forwarder.dev", "scheduledtasks/status", "patch") not in grants(
        "forwarder-scheduledtask-editor"
    )
    assert {v for _, _, v in grants("forwarder-scheduledtask-viewer")} == {"get", "list", "watch"}


def test_kustomization_lists_every_rbac_file() -> None:
    (kustomization,) = documents(RBAC / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in RBAC.glob("*.yaml")} - {"kustomization.yaml"}
