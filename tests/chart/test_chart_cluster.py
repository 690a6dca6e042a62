"""The chart against a real kube-apiserver: Helm installs, upgrades and uninstalls it, and the
install manifest passes server-side admission.

Helm (helm-python-sdk, as the control plane's admin, without waiting: no pod ever runs) creates
every object the chart renders, and the apiserver keeps each one; an upgrade changes what the
new values change and deletes what they drop; an uninstall removes all but the Secrets the
chart marks ``keep``. Every CI scenario installs the same way. ``kubectl apply --server-side
--dry-run=server`` admits every object of manifests/install/forwarder.yaml after the steps its
header lists. What the apiserver checks here and the offline render tests cannot: the real
schemas of every built-in kind, RBAC objects (a Role may not grant more than its creator
holds), names, immutable fields on upgrade and Helm's own server-side apply.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shlex
from typing import Any

import helm_python as helm
import pytest
import yaml
from support.chart import CHART, REPO, SCENARIOS, load_values
from support.chart_release import Ref, installed, live_objects, manifest_objects
from support.controlplane import ControlPlane
from support.processes import eventually
from support.scheduled_tasks import FINALIZER_POLICY, admitted_with_finalizer

INSTALL_MANIFEST = REPO / "manifests" / "install" / "forwarder.yaml"
# The finalizer's admission policy and its binding: rendered only where the API server serves
# the kind (Kubernetes 1.36+, this control plane), which an offline render cannot know.
SERVED_ONLY = {"MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"}
# KEDA's ScaledObject and TriggerAuthentication are served only where KEDA is installed, and
# this control plane has no KEDA: the keda scenario renders them, nothing here can admit them.
NEEDS_KEDA = {"keda"}
# Likewise the Prometheus Operator's ServiceMonitor and PrometheusRule (their shape is checked
# offline in test_chart_alerts.py).
NEEDS_PROMETHEUS_OPERATOR = {"monitoring"}


def offline_refs(values: dict[str, Any], name: str, namespace: str) -> set[Ref]:
    """What the chart renders offline for this release, ``helm test`` hooks aside."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=name, namespace=namespace)
    refs = set()
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        for obj in manifest_objects(text):
            if "helm.sh/hook" not in (obj["metadata"].get("annotations") or {}):
                refs.add(Ref.of(obj))
    return refs


def split_served_only(refs: set[Ref]) -> tuple[set[Ref], set[Ref]]:
    """``refs`` as (what an offline render has too, the kinds rendered only when served)."""
    served = {ref for ref in refs if ref.kind in SERVED_ONLY}
    return refs - served, served


def finalized_at_creation(plane: ControlPlane, namespace: str, expected: bool) -> None:
    """Wait until a ScheduledTask created in ``namespace`` gets the operator's finalizer at
    creation (``expected``) or does not: the API server loads a changed policy a moment
    later."""
    eventually(
        lambda: admitted_with_finalizer(plane, namespace) is expected,
        30,
        0.2,
        message=f"finalizer at creation in {namespace}: {expected}",
    )


def missing(plane: ControlPlane, refs: set[Ref]) -> list[str]:
    found = live_objects(plane, refs)
    return sorted(str(ref) for ref in refs - set(found))


def container(obj: dict[str, Any]) -> dict[str, Any]:
    (only,) = obj["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env_of(obj: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(obj).get("env", []) if "value" in e}


def test_install_upgrade_and_uninstall(crds: ControlPlane, namespace: str) -> None:
    plane = crds
    watched = [f"{namespace}-a", f"{namespace}-b"]
    for each in watched:
        plane.create_namespace(each)
    with installed(plane, namespace, "chart") as release:
        # -- install: the manifest is the whole offline render, and every object of it exists.
        first = set(release.refs())
        offline, policy = split_served_only(first)
        assert offline == offline_refs({}, "chart", namespace)
        assert {ref.kind for ref in policy} == SERVED_ONLY
        assert len(first) >= 25
        live = release.live()
        assert missing(plane, first) == []
        assert release.summary["status"] == "deployed" and release.summary["revision"] == 1
        # The CRDs (charts/forwarder/crds/) are served; `helm test`'s pod is made only by it.
        for path in sorted((CHART / "crds").glob("*.yaml")):
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s")
        assert missing(plane, {Ref("Pod", "", namespace, "chart-forwarder-test")})
        secrets_before = {ref: obj["data"] for ref, obj in live.items() if ref.kind == "Secret"}
        assert len(secrets_before) == 3
        worker = live[Ref("Deployment", "apps", namespace, "chart-forwarder-worker")]
        assert worker["spec"]["replicas"] == 2
        # Three ClusterRoles and their bindings (operator, api, the operator's CRD reader),
        # each its own object even where the namespace makes their names long.
        assert len(release.refs()) == len(first)
        assert [ref.kind for ref in first].count("ClusterRole") == 3
        assert [ref.kind for ref in first].count("ClusterRoleBinding") == 3
        # The operator's finalizer is set at creation in every namespace: the policy is
        # manifests/admission's, under the release's name.
        for each in (namespace, watched[0]):
            finalized_at_creation(plane, each, True)
        (served_policy,) = (ref for ref in policy if ref.kind == "MutatingAdmissionPolicy")
        shipped, _binding = yaml.safe_load_all(FINALIZER_POLICY.read_text())
        shipped["metadata"]["name"] += "-dry-run"  # the operator tests may have made it
        admitted = plane.kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(shipped)
        )
        assert live[served_policy]["spec"] == json.loads(admitted.stdout)["spec"]

        # -- upgrade: more workers, another key prefix, two watched namespaces.
        values = {
            "worker": {"replicas": 3},
            "config": {"keyPrefix": "chart-upgraded:"},
            "watchNamespaces": watched,
        }
        summary = release.upgrade(values)
        assert summary["status"] == "deployed" and summary["revision"] == 2
        second = set(release.refs())
        assert split_served_only(second) == (offline_refs(values, "chart", namespace), policy)
        assert missing(plane, second) == []
        live = release.live()
        worker_after = live[Ref("Deployment", "apps", namespace, "chart-forwarder-worker")]
        assert worker_after["spec"]["replicas"] == 3
        config = live[Ref("ConfigMap", "", namespace, "chart-forwarder")]
        assert config["data"]["FORWARDER_KEY_PREFIX"] == "chart-upgraded:"
        # The pods roll: their template's config checksum follows the ConfigMap.
        checksum = "checksum/config"
        before = worker["spec"]["template"]["metadata"]["annotations"][checksum]
        assert worker_after["spec"]["template"]["metadata"]["annotations"][checksum] != before
        operator = live[Ref("Deployment", "apps", namespace, "chart-forwarder-operator")]
        assert [f"--namespace={each}" for each in watched] == [
            arg for arg in container(operator)["command"] if arg.startswith("--namespace=")
        ]
        assert env_of(operator)["FORWARDER_OPERATOR_NAMESPACES"] == ",".join(watched)
        api = live[Ref("Deployment", "apps", namespace, "chart-forwarder-api")]
        assert env_of(api)["FORWARDER_API_NAMESPACES"] == ",".join(watched)
        # The finalizer only where the operator watches: nothing would release it elsewhere.
        finalized_at_creation(plane, namespace, False)
        for each in watched:
            finalized_at_creation(plane, each, True)
        for each in watched:
            for account in ("operator", "api"):
                role = Ref("Role", "rbac.authorization.k8s.io", each, f"chart-forwarder-{account}")
                assert role in live, f"{role} missing"
        # What the new values drop, Helm deletes: the cluster-wide roles of operator and api.
        dropped = first - second
        assert {ref.kind for ref in dropped} == {"ClusterRole", "ClusterRoleBinding"}
        assert len(dropped) == 4
        assert missing(plane, dropped) == sorted(str(ref) for ref in dropped)
        # Generated credentials are looked up, not generated again.
        for ref, data in secrets_before.items():
            assert live[ref]["data"] == data, f"{ref} changed on upgrade"
        history = release.config.history("chart")
        assert [(h["revision"], h["status"]) for h in history] == [
            (1, "superseded"),
            (2, "deployed"),
        ]

        # -- uninstall: everything Helm made is gone, but the Secrets marked keep.
        result = release.config.uninstall("chart", timeout=120)
        for ref in secrets_before:
            assert ref.name in result["info"]
        gone = missing(plane, second)
        assert set(gone) == {str(ref) for ref in second if ref not in secrets_before}
        assert live_objects(plane, set(secrets_before)).keys() == secrets_before.keys()
        assert release.config.list(all_states=True) == []
        # Helm never deletes CRDs.
        plane.kubectl("get", "crd", "scheduledtasks.forwarder.dev")


@pytest.mark.parametrize(
    "scenario", sorted(set(SCENARIOS) - NEEDS_KEDA - NEEDS_PROMETHEUS_OPERATOR)
)
def test_every_ci_scenario_installs(crds: ControlPlane, namespace: str, scenario: str) -> None:
    values = load_values(scenario)
    for each in values.get("watchNamespaces", []):
        crds.create_namespace(each)
    name = f"ci-{scenario}"
    with installed(crds, namespace, name, values) as release:
        refs = set(release.refs())
        offline, policy = split_served_only(refs)
        assert offline == offline_refs(values, name, namespace)
        assert {ref.kind for ref in policy} == SERVED_ONLY
        assert missing(crds, refs) == []


def _header_commands() -> list[str]:
    """The kubectl commands manifests/install/forwarder.yaml's header tells a user to run."""
    commands = []
    for line in INSTALL_MANIFEST.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("#   kubectl "):  # the indented command lines
            commands.append(line.removeprefix("#").strip())
    return commands


def test_install_manifest_is_admitted_by_a_server_side_dry_run(control_plane: ControlPlane) -> None:
    commands = _header_commands()
    apply = f"kubectl apply --server-side -f {INSTALL_MANIFEST.relative_to(REPO)}"
    assert commands[-1] == apply
    # The header's own steps first: the namespace and the Secrets (random values where the
    # header asks openssl for them). Another test of this session may have made the namespace.
    made_here: list[str] = []  # Secrets, removed after: the session's control plane is shared
    for command in commands[:-1]:
        command = command.replace('"$(openssl rand -hex 24)"', secrets.token_hex(24))
        args = shlex.split(command)[1:]
        done = control_plane.kubectl(*args, check=False)
        assert done.returncode == 0 or "AlreadyExists" in done.stderr, done.stderr
        if done.returncode == 0 and "generic" in args:  # create secret generic NAME ...
            made_here.append(args[args.index("generic") + 1])
    try:
        _dry_run(control_plane)
    finally:
        for name in made_here:
            control_plane.kubectl("-n", "forwarder", "delete", "secret", name)


def _dry_run(control_plane: ControlPlane) -> None:
    objects = [obj for obj in yaml.safe_load_all(INSTALL_MANIFEST.read_text()) if obj]
    assert len(objects) >= 25

    reply = control_plane.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", str(INSTALL_MANIFEST), timeout=120
    )
    admitted = set(re.findall(r"^(\S+) serverside-applied \(server dry run\)$", reply.stdout, re.M))
    for obj in objects:
        ref = Ref.of(obj)
        kind = f"{ref.kind.lower()}.{ref.group}" if ref.group else ref.kind.lower()
        assert f"{kind}/{ref.name}" in admitted, f"{ref} not admitted:\n{reply.stdout}"
    assert len(admitted) == len(objects)
    # A dry run: nothing was created.
    deployments = {Ref.of(obj) for obj in objects if obj["kind"] == "Deployment"}
    assert len(missing(control_plane, deployments)) == len(deployments)
    # The Secrets the header made are what the Deployments refer to.
    secret_names = {
        source["secretKeyRef"]["name"]
        for obj in objects
        if obj["kind"] in {"Deployment", "StatefulSet"}
        for entry in container(obj).get("env", [])
        if "secretKeyRef" in (source := entry.get("valueFrom") or {})
    }
    wanted = {Ref("Secret", "", "forwarder", name) for name in secret_names}
    made = live_objects(control_plane, wanted)
    assert secret_names == {"forwarder-redis", "forwarder-api", "forwarder-flower"}
    assert {ref.name for ref in made} == secret_names
    for secret in made.values():
        assert all(base64.b64decode(value) for value in secret["data"].values())
