"""The test control plane itself: a real kube-apiserver that enforces RBAC on ServiceAccounts.

Every other cluster test relies on these two facts: a ServiceAccount's token is held to its
Roles (so a test of the operator's or the api's RBAC can fail), and the server reports the
pinned version (Helm checks charts' kubeVersion against it).
"""

from __future__ import annotations

import json
import urllib.error

import pytest
from support.controlplane import ControlPlane, kubernetes_version


def test_the_server_reports_the_pinned_version(control_plane: ControlPlane) -> None:
    version = control_plane.request("GET", "/version")
    assert version["gitVersion"] == kubernetes_version()
    assert int(version["minor"]) >= 34


def test_a_service_account_is_held_to_its_roles(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = control_plane.service_account_token(namespace, "reader")
    path = f"/api/v1/namespaces/{namespace}/configmaps"

    with pytest.raises(urllib.error.HTTPError) as refused:
        control_plane.request("GET", path, token=token)
    assert refused.value.code == 403
    assert "cannot list resource" in json.loads(refused.value.read())["message"]

    control_plane.kubectl(
        "create", "role", "read-configmaps", "--verb=list", "--resource=configmaps", "-n", namespace
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        "reader",
        "--role=read-configmaps",
        f"--serviceaccount={namespace}:reader",
        "-n",
        namespace,
    )
    assert control_plane.request("GET", path, token=token)["kind"] == "ConfigMapList"
    # Only where the Role says: another namespace is still refused.
    with pytest.raises(urllib.error.HTTPError) as elsewhere:
        control_plane.request("GET", "/api/v1/namespaces/default/configmaps", token=token)
    assert elsewhere.value.code == 403


def test_a_service_account_kubeconfig_drives_kubectl_as_that_account(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "nobody")
    who = control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig)
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{namespace}:nobody"
    )
    denied = control_plane.kubectl("get", "secrets", kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
