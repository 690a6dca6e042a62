"""The chart, rendered by Helm's engine for every CI scenario: lint, Kubernetes schemas, policy.

Each test runs once per scenario (defaults plus charts/forwarder/ci/*-values.yaml), so a new
scenario file is linted, validated and policy-checked without a new test.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from forwarder_operator.main import parse_args
from support.chart import CHART, NAMESPACE, Rendered, load_values, render

KUBE_VERSIONS = ("1.29", "1.37")
# Kinds no Kubernetes release defines. KEDA ships no offline schema, so its objects are checked
# for shape in test_keda_scales_workers_on_each_queue instead; kopf's peering objects are
# admitted by the real apiserver with the chart's CRDs (test_chart_cluster.py); the Prometheus
# Operator's kinds are checked for shape in test_chart_alerts.py.
CUSTOM_KINDS = {
    "ScaledObject",
    "TriggerAuthentication",
    "KopfPeering",
    "ClusterKopfPeering",
    "ServiceMonitor",
    "PrometheusRule",
}
FORWARDER_COMPONENTS = {"operator", "beat", "worker", "api", "flower"}
TOKEN_MOUNTERS = {"operator", "api"}


def component(obj: dict[str, Any]) -> str:
    labels: dict[str, str] = obj["metadata"]["labels"]
    return labels["app.kubernetes.io/component"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


# -- lint and schema ----------------------------------------------------------------------


def test_lint_is_clean_in_strict_mode(scenario: str) -> None:
    report = helm.lint(CHART, load_values(scenario), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [], json.dumps(report, indent=1)
    assert problems == [], json.dumps(report, indent=1)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workers": {"replicas": 3}}, "additional properties 'workers' not allowed"),
        ({"worker": {"concurrency": "4"}}, "/worker/concurrency"),
        ({"worker": {"queues": []}}, "/worker/queues"),
        ({"redis": {"external": {"url": "redis://:hunter2@redis:6379/0"}}}, "/redis/external/url"),
        ({"podSecurityContext": {"runAsUser": 0}}, "/podSecurityContext/runAsUser"),
        ({"flower": {"auth": {"enabled": False}}}, "additional properties 'enabled' not allowed"),
        ({"api": {"auth": {"token": "changeme"}}}, "additional properties 'token' not allowed"),
    ],
)
def test_schema_rejects_bad_values(chart: helm.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        chart.render(values, name="forwarder", namespace=NAMESPACE)


def test_every_schema_object_forbids_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, f"{path} allows unknown keys"
            if "properties" in node:
                for key, child in node["properties"].items():
                    assert "type" in child or "$ref" in child, f"{path}.{key} has no type"
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{path}[{index}]")

    walk(schema, "#")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"worker": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}},
            "worker.autoscaling and worker.keda cannot both be enabled",
        ),
        (
            {"redis": {"enabled": False}},
            "redis.external.url (or redis.external.sentinel.hosts) is required",
        ),
        (
            {
                "redis": {
                    "enabled": False,
                    "external": {"url": "redis://r:6379/0", "sentinel": {"hosts": ["s:26379"]}},
                }
            },
            "set redis.external.url or redis.external.sentinel.hosts, not both",
        ),
        (
            {"redis": {"external": {"sentinel": {"hosts": ["s:26379"]}}}},
            "redis.external is set but redis.enabled is true",
        ),
        (
            {
                "redis": {
                    "enabled": False,
                    "external": {"url": "rediss://r:6379/0", "tls": {"clientCertificate": True}},
                }
            },
            "redis.external.tls.clientCertificate needs redis.external.tls.existingSecret",
        ),
        ({"api": {"ingress": {"enabled": True}}}, "api.ingress.hosts needs at least one host"),
        ({"config": {"taskTimeLimit": 60}}, "taskSoftTimeLimit must not exceed"),
        (
            {"api": {"enabled": False}, "metrics": {"prometheusRule": {"enabled": True}}},
            "metrics.serviceMonitor and metrics.prometheusRule need api.enabled",
        ),
    ],
)
def test_contradictory_values_fail_with_a_clear_message(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart.render(values, name="forwarder", namespace=NAMESPACE)


# -- Kubernetes schemas ----------------------------------------------------------------------


@functools.cache
def validation_error(obj_json: str, version: str) -> str | None:
    """kubernetes-validate's strict verdict on one object (cached: scenarios share most)."""
    try:
        kubernetes_validate.validate(json.loads(obj_json), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_validates_strictly(rendered: Rendered, version: str) -> None:
    checked = 0
    for obj in rendered.objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        error = validation_error(json.dumps(obj, sort_keys=True), version)
        assert error is None, f"{obj['kind']}/{obj['metadata']['name']} on {version}: {error}"
        checked += 1
    assert checked >= 15


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_crds_validate_strictly(chart: helm.Chart, version: str) -> None:
    crds = [yaml.safe_load(crd["data"]) for crd in chart.crds]
    if not crds:
        pytest.skip("charts/forwarder/crds/ is empty until the operator branch's CRD is merged")
    for crd in crds:
        kubernetes_validate.validate(crd, version, strict=True)


# -- policy ------------------------------------------------------------------------------------


def test_no_container_runs_as_root_or_can_escalate(rendered: Rendered) -> None:
    for where, spec in rendered.pod_specs():
        pod = spec.get("securityContext", {})
        assert pod.get("runAsUser", 1) != 0, where
        for container in containers(spec):
            context = container.get("securityContext", {})
            name = f"{where}:{container['name']}"
            assert context.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, name
            assert context.get("runAsUser", pod.get("runAsUser")) not in (0, None), name
            # A high UID, which no host user has (checkov's CKV_K8S_40).
            assert context.get("runAsUser", pod.get("runAsUser")) >= 10000, name
            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("privileged", False) is False, name
            assert context.get("readOnlyRootFilesystem") is True, name
            assert context.get("capabilities", {}).get("drop") == ["ALL"], name
            assert "add" not in context.get("capabilities", {}), name
            seccomp = context.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", name


def test_every_container_has_probes_and_resources(rendered: Rendered) -> None:
    for where, spec in rendered.pod_specs():
        for container in spec["containers"]:
            name = f"{where}:{container['name']}"
            assert "livenessProbe" in container, name
            assert "readinessProbe" in container, name
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
            assert {"cpu", "memory"} <= set(resources.get("limits", {})), name


def test_read_only_containers_get_a_writable_tmp(rendered: Rendered) -> None:
    for where, spec in rendered.pod_specs():
        if where.startswith("Pod/"):
            continue  # the one-shot helm test pod writes nothing
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in spec["containers"]:
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp, f"{where}:{container['name']}"
            assert tmp[0]["name"] in empty_dirs, f"{where}:{container['name']}"


def test_only_operator_and_api_mount_a_service_account_token(rendered: Rendered) -> None:
    accounts = {
        sa["metadata"]["name"]: sa.get("automountServiceAccountToken", True)
        for sa in rendered.of_kind("ServiceAccount")
    }
    mounting = set()
    for obj in rendered.objects:
        if obj["kind"] not in {"Deployment", "StatefulSet", "Pod"}:
            continue
        spec = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
        account = spec.get("serviceAccountName", "default")
        mounts = spec.get("automountServiceAccountToken", accounts.get(account, True))
        if mounts:
            mounting.add(component(obj))
        elif component(obj) in FORWARDER_COMPONENTS:
            assert accounts[account] is False, f"{account} would mount a token by default"
    has_api = "forwarder-api" in rendered.names("Deployment")
    assert mounting == ({"operator", "api"} if has_api else {"operator"})


def test_checkov_suppressions_reach_the_rendered_workloads_each_with_a_reason(
    rendered: Rendered,
) -> None:
    """checkov reads ``checkov.io/skipN: CHECK=reason`` on the rendered object (make scan): every
    workload carries exactly the suppressions docs/testing.md lists, each with one "=" (checkov
    splits on it) and a reason; nothing else suppresses anything."""
    found: dict[str, set[str]] = {}
    expected: dict[str, set[str]] = {}
    for obj in rendered.objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        annotations = obj["metadata"].get("annotations") or {}
        for key, value in annotations.items():
            if key.startswith("checkov.io/skip"):
                check, reason = value.split("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check), (where, key, value)
                assert len(reason.split()) >= 5, (where, key, value)
                found.setdefault(where, set()).add(check)
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            # Credentials in env vars (secretKeyRef); the API server token where one is needed.
            expected[where] = {"CKV_K8S_35"} | (
                {"CKV_K8S_38"} if component(obj) in TOKEN_MOUNTERS else set()
            )
    assert found == expected


def test_no_rbac_rule_has_a_wildcard_or_touches_secrets(rendered: Rendered) -> None:
    roles = rendered.of_kind("ClusterRole") + rendered.of_kind("Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: {rule}"
            assert "secrets" not in rule.get("resources", []), role["metadata"]["name"]


def test_object_names_stay_distinct_and_short_in_a_long_namespace(
    chart: helm.Chart, scenario: str
) -> None:
    # Cluster-scoped names carry the release namespace; in the longest namespace Kubernetes
    # allows they must still fit in 63 characters and stay distinct: two ClusterRoles of one
    # name are one object in the cluster, holding the rules of whichever was applied last.
    namespace = "n" * 63
    rendered = render(chart, load_values(scenario), name="my-forwarder", namespace=namespace)
    names = [
        (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        for obj in rendered.objects
    ]
    assert len(names) == len(set(names)), sorted(names)
    assert all(len(name) <= 63 for _, _, name in names), [n for n in names if len(n[2]) > 63]
    # Short enough names stay as they were, so upgrades keep their objects.
    short = render(chart, load_values(scenario), name="forwarder", namespace="ops")
    cluster_roles = set(short.names("ClusterRole"))
    assert "forwarder-operator-ops-crds" in cluster_roles
    if not load_values(scenario).get("watchNamespaces"):
        assert {"forwarder-operator-ops", "forwarder-api-ops"} <= cluster_roles


def test_rbac_is_scoped_to_the_watched_namespaces(chart: helm.Chart) -> None:
    values = load_values("peering")
    scoped = render(chart, values)
    roles = scoped.of_kind("Role")
    assert sorted({r["metadata"]["namespace"] for r in roles}) == sorted(values["watchNamespaces"])
    for cluster_role in scoped.of_kind("ClusterRole"):
        groups = {g for rule in cluster_role["rules"] for g in rule["apiGroups"]}
        assert groups <= {"apiextensions.k8s.io", ""}, cluster_role["metadata"]["name"]
        resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
        assert resources == {"customresourcedefinitions", "namespaces"}
    operator = scoped.get("Deployment", "forwarder-operator")["spec"]["template"]["spec"]
    args = operator["containers"][0]["command"]
    assert {"--namespace=mlops", "--namespace=data", "--peering=forwarder-mlops"} <= set(args)
    assert "--all-namespaces" not in args
    # The api's /schedules serves those namespaces only (its Roles allow no more).
    api = scoped.get("Deployment", "forwarder-api")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in api["env"]}
    assert env["FORWARDER_API_NAMESPACES"] == ",".join(values["watchNamespaces"])
    default_api = render(chart).get("Deployment", "forwarder-api")["spec"]["template"]["spec"]
    assert "FORWARDER_API_NAMESPACES" not in {
        e["name"] for e in default_api["containers"][0]["env"]
    }


def test_peering_permissions_only_when_peering_is_enabled(chart: helm.Chart) -> None:
    def peering_rules(rendered: Rendered) -> list[dict[str, Any]]:
        roles = rendered.of_kind("ClusterRole") + rendered.of_kind("Role")
        return [r for role in roles for r in role["rules"] if "kopf.dev" in r["apiGroups"]]

    assert peering_rules(render(chart)) == []
    enabled = render(chart, {"operator": {"peering": {"enabled": True}}})
    rules = peering_rules(enabled)
    assert {v for r in rules for v in r["verbs"]} == {"get", "list", "watch", "patch"}
    assert [r["resourceNames"] for r in rules if "patch" in r["verbs"]] == [["forwarder"]]
    command = enabled.get("Deployment", "forwarder-operator")["spec"]["template"]["spec"]
    assert "--peering=forwarder" in command["containers"][0]["command"]
    default = render(chart).get("Deployment", "forwarder-operator")["spec"]
    assert (default["replicas"], default["strategy"]["type"]) == (1, "Recreate")
    # Without a peering name, `forwarder operator` runs kopf standalone.
    assert not any(
        arg.startswith("--peering")
        for arg in default["template"]["spec"]["containers"][0]["command"]
    )


def test_peering_object_is_made_where_the_operator_looks_for_it(chart: helm.Chart) -> None:
    # kopf given a peering name stays paused until that peering object exists, and never
    # creates it: the chart does, cluster-wide or in each watched namespace.
    def peerings(rendered: Rendered) -> list[tuple[str, str | None, str]]:
        kinds = ("ClusterKopfPeering", "KopfPeering")
        objects = [obj for kind in kinds for obj in rendered.of_kind(kind)]
        return [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]

    assert peerings(render(chart)) == []
    assert peerings(render(chart, load_values("peering") | {"operator": {}})) == []
    enabled = render(chart, {"operator": {"peering": {"enabled": True}}})
    assert peerings(enabled) == [("ClusterKopfPeering", None, "forwarder")]
    scoped = load_values("peering")
    assert peerings(render(chart, scoped)) == [
        ("KopfPeering", namespace, scoped["operator"]["peering"]["name"])
        for namespace in scoped["watchNamespaces"]
    ]


@pytest.mark.parametrize(
    ("level", "verbose", "quiet"),
    [
        ("DEBUG", True, False),
        ("INFO", False, False),
        ("WARNING", False, True),
        ("ERROR", False, True),
    ],
)
def test_operator_command_is_what_forwarder_operator_accepts(
    chart: helm.Chart, level: str, verbose: bool, quiet: bool
) -> None:
    values = {
        "config": {"logLevel": level},
        "watchNamespaces": ["team-a", "team-b"],
        "operator": {"peering": {"enabled": True}},
    }
    spec = render(chart, values).get("Deployment", "forwarder-operator")["spec"]["template"]
    command = spec["spec"]["containers"][0]["command"]
    assert command[:2] == ["forwarder", "operator"]
    args = parse_args(command[2:])  # argparse exits (a crash-looping pod) on a wrong flag
    assert (args.verbose or args.debug, args.quiet) == (verbose, quiet)
    assert args.namespace == ["team-a", "team-b"]
    assert args.peering == "forwarder"
    assert args.liveness == "http://0.0.0.0:8080/healthz"


def _walk_values(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [kv for key, value in node.items() for kv in _walk_values(value, f"{path}.{key}")]
    return [(path.lstrip("."), node)]


def test_no_password_or_token_has_a_default(chart: helm.Chart, rendered: Rendered) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path, value in _walk_values(values):
        leaf = path.rsplit(".", 1)[-1].lower()
        if re.search(r"(password|token|secret)s?$", leaf):
            assert not value, f"{path} has a default value"
    # Every Secret the chart makes is generated, and generated afresh by each offline render.
    again = render(chart)
    for secret in rendered.of_kind("Secret"):
        assert secret["metadata"]["annotations"]["forwarder.dev/generated"] == "true"
    first = {s["metadata"]["name"]: s["data"] for s in render(chart).of_kind("Secret")}
    for name, data in first.items():
        other = again.get("Secret", name)["data"]
        assert any(data[key] != other[key] for key in data), f"{name} is not random"
    # No container gets a credential as a literal value.
    for where, spec in rendered.pod_specs():
        for container in containers(spec):
            for env in container.get("env", []):
                if re.search(r"PASSWORD|TOKEN|SECRET|AUTH", env["name"]) and "value" in env:
                    # A switch (FORWARDER_API_METRICS_AUTH) is no credential.
                    if env["value"] in ("true", "false"):
                        continue
                    assert re.fullmatch(r"(\$\([A-Z_]+\):?)+", env["value"]), (where, env)


def test_generated_credentials_are_strong(chart: helm.Chart) -> None:
    import base64

    for secret in render(chart).of_kind("Secret"):
        for key, value in secret["data"].items():
            if key != "username":
                assert len(base64.b64decode(value)) >= 32, (secret["metadata"]["name"], key)


def test_flower_always_requires_basic_auth(rendered: Rendered) -> None:
    for deployment in rendered.of_kind("Deployment"):
        if component(deployment) != "flower":
            continue
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["FLOWER_BASIC_AUTH"]["value"] == "$(FLOWER_USER):$(FLOWER_PASSWORD)"
        assert "secretKeyRef" in env["FLOWER_PASSWORD"]["valueFrom"]
        assert not any("auth" in arg for arg in container["command"])


def test_pods_roll_when_config_or_credentials_change(chart: helm.Chart) -> None:
    def checksums(values: dict[str, Any]) -> dict[str, dict[str, str]]:
        return {
            d["metadata"]["name"]: {
                k: v
                for k, v in d["spec"]["template"]["metadata"]["annotations"].items()
                if k.startswith("checksum/")
            }
            for d in render(chart, values).of_kind("Deployment")
        }

    base = checksums({})
    assert all(set(c) == {"checksum/config", "checksum/secrets"} for c in base.values())
    assert checksums({}) == base, "checksums must not change between identical renders"
    config = checksums({"config": {"httpAllow": ["example.com"]}})
    secrets = checksums({"api": {"auth": {"existingSecret": "my-tokens"}}})
    for name in base:
        assert config[name]["checksum/config"] != base[name]["checksum/config"], name
        assert secrets[name]["checksum/secrets"] != base[name]["checksum/secrets"], name


def test_network_policy_admits_only_this_releases_pods(rendered: Rendered, scenario: str) -> None:
    policies = rendered.of_kind("NetworkPolicy")
    if not load_values(scenario).get("networkPolicy", {}).get("enabled"):
        assert policies == []
        return
    (policy,) = policies
    redis = rendered.get("StatefulSet", "forwarder-redis")
    pod_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    release_selector = rule["from"][0]["podSelector"]["matchLabels"]
    assert release_selector == {
        "app.kubernetes.io/name": "forwarder",
        "app.kubernetes.io/instance": "forwarder",
    }
    assert "namespaceSelector" not in rule["from"][0]  # this namespace only
    for obj in rendered.objects:
        if obj["kind"] in {"Deployment", "Pod"}:
            labels = (obj if obj["kind"] == "Pod" else obj["spec"]["template"])["metadata"]
            assert release_selector.items() <= labels["labels"].items(), obj["metadata"]["name"]
    extra = load_values(scenario)["networkPolicy"].get("extraRedisClients", [])
    assert rule["from"][1:] == extra


def test_pod_disruption_budgets_cover_replicated_components(rendered: Rendered) -> None:
    budgets = {
        pdb["metadata"]["name"]: pdb["spec"] for pdb in rendered.of_kind("PodDisruptionBudget")
    }
    for deployment in rendered.of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        replicated = deployment["spec"].get("replicas", 2) > 1
        assert (name in budgets) == replicated, name
        if replicated:
            selector = deployment["spec"]["selector"]["matchLabels"]
            assert budgets[name]["selector"]["matchLabels"] == selector
            assert budgets[name]["maxUnavailable"] == 1


# -- scenarios ---------------------------------------------------------------------------------


def test_digests_pin_every_image(chart: helm.Chart) -> None:
    """``image.digest`` and ``redis.image.digest`` replace the tags (checkov's CKV_K8S_43 is
    skipped for the defaults only because they cannot know a digest)."""
    ours, valkey = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    rendered = render(chart, {"image": {"digest": ours}, "redis": {"image": {"digest": valkey}}})
    images = {
        f"{where}:{c['name']}": c["image"]
        for where, spec in rendered.pod_specs()
        for c in containers(spec)
    }
    assert images["StatefulSet/forwarder-redis:redis"] == f"docker.io/valkey/valkey@{valkey}"
    others = {name: image for name, image in images.items() if "redis" not in name}
    assert others
    assert set(others.values()) == {f"ghcr.io/forwarder-dev/forwarder@{ours}"}, others


def test_external_redis_replaces_the_bundled_one(chart: helm.Chart) -> None:
    values = load_values("external-redis")
    rendered = render(chart, values)
    assert rendered.of_kind("StatefulSet") == []
    assert rendered.of_kind("Secret") == []  # every credential comes from existing Secrets
    config = rendered.get("ConfigMap", "forwarder")["data"]
    assert config["FORWARDER_REDIS_URL"] == values["redis"]["external"]["url"]
    for deployment in rendered.of_kind("Deployment"):
        env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["FORWARDER_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "shared-redis",
            "key": "redis-password",
        }


def test_keda_scales_workers_on_each_queue(chart: helm.Chart) -> None:
    values = load_values("keda")
    rendered = render(chart, values)
    (scaled,) = rendered.of_kind("ScaledObject")
    (auth,) = rendered.of_kind("TriggerAuthentication")
    assert scaled["apiVersion"] == auth["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {"name": "forwarder-worker"}
    assert "replicas" not in rendered.get("Deployment", "forwarder-worker")["spec"]
    assert rendered.of_kind("HorizontalPodAutoscaler") == []
    lists = [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]]
    assert lists == ["forwarder:default", "forwarder:reports"]
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["address"] == "forwarder-redis.forwarder.svc:6379"
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
        assert all(isinstance(v, str) for v in trigger["metadata"].values())
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "forwarder-redis", "key": "password"}
    ]


def test_hpa_scales_workers_on_cpu(chart: helm.Chart) -> None:
    rendered = render(chart, load_values("hpa"))
    (hpa,) = rendered.of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "forwarder-worker"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert "replicas" not in rendered.get("Deployment", "forwarder-worker")["spec"]


def test_ingresses_route_to_the_services(chart: helm.Chart) -> None:
    rendered = render(chart, load_values("ingress"))
    paths = {}
    for ingress in rendered.of_kind("Ingress"):
        (rule,) = ingress["spec"]["rules"]
        (path,) = rule["http"]["paths"]
        service = rendered.get("Service", path["backend"]["service"]["name"])
        assert path["backend"]["service"]["port"]["name"] in {
            p["name"] for p in service["spec"]["ports"]
        }
        paths[ingress["metadata"]["name"]] = path["path"]
    assert paths == {"forwarder-api": "/", "forwarder-flower": "/flower"}
    flower = rendered.get("Deployment", "forwarder-flower")["spec"]["template"]["spec"]
    assert "--url_prefix=flower" in flower["containers"][0]["command"]
    assert flower["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/flower/healthcheck"
    api = rendered.get("Deployment", "forwarder-api")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in api["env"]}
    assert env["FORWARDER_FLOWER_URL"] == "http://forwarder-flower.forwarder.svc:7501/flower"


def test_without_flower_nothing_refers_to_it(chart: helm.Chart) -> None:
    rendered = render(chart, load_values("no-flower"))
    text = json.dumps(rendered.objects)
    assert "forwarder-flower" not in text
    assert "FLOWER" not in text
    assert "Flower" not in rendered.notes


def test_notes_say_how_to_reach_the_api_and_flower_and_read_the_token(rendered: Rendered) -> None:
    if "forwarder-api" in rendered.names("Service"):
        api = rendered.get("Deployment", "forwarder-api")["spec"]["template"]["spec"]
        tokens = {e["name"]: e for e in api["containers"][0]["env"]}["FORWARDER_API_TOKENS"]
        name = tokens["valueFrom"]["secretKeyRef"]["name"]
        assert f"kubectl get secret -n forwarder {name}" in rendered.notes
        assert "/docs" in rendered.notes
        assert "Bearer" in rendered.notes
    if "forwarder-flower" in rendered.names("Service"):
        assert "Flower" in rendered.notes
        assert ".data.password" in rendered.notes


def test_helm_test_calls_the_api_readyz(rendered: Rendered) -> None:
    hooks = [
        p
        for p in rendered.of_kind("Pod")
        if p["metadata"]["annotations"].get("helm.sh/hook") == "test"
    ]
    (hook,) = hooks
    command = hook["spec"]["containers"][0]["command"]
    api = rendered.get("Service", "forwarder-api")
    assert (
        command[-1]
        == f"http://forwarder-api.forwarder.svc:{api['spec']['ports'][0]['port']}/readyz"
    )


def test_every_forwarder_env_name_is_a_setting_of_its_component(chart: helm.Chart) -> None:
    # Settings ignore unknown FORWARDER_* names, so a misspelt one would silently do nothing.
    from forwarder_api.settings import ApiSettings
    from forwarder_operator.settings import OperatorSettings
    from forwarder_worker.settings import Settings

    known = {
        "operator": OperatorSettings,
        "api": ApiSettings,
        "worker": Settings,
        "beat": Settings,
        "flower": Settings,
    }
    values = {
        "watchNamespaces": ["mlops"],
        "config": {"taskModules": ["mycompany.tasks"], "httpAllow": ["example.com"]},
        "api": {"tasks": ["forwarder.*"]},
    }
    rendered = render(chart, values)
    config = rendered.get("ConfigMap", "forwarder")["data"]
    for deployment in rendered.of_kind("Deployment"):
        fields = set(known[component(deployment)].model_fields)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        names = [e["name"] for e in container["env"]] + list(config)
        for name in names:
            if name.startswith("FORWARDER_"):
                field = name.removeprefix("FORWARDER_").lower()
                assert field in fields, f"{deployment['metadata']['name']}: {name} is not read"


@pytest.mark.parametrize(
    ("url", "address", "tls"),
    [
        ("redis://redis.data:6380/3", "redis.data:6380", None),
        ("rediss://cache.example.com", "cache.example.com:6379", "true"),
    ],
)
def test_keda_reaches_an_external_redis(
    chart: helm.Chart, url: str, address: str, tls: str | None
) -> None:
    values = {
        "redis": {"enabled": False, "external": {"url": url}},
        "worker": {"keda": {"enabled": True}},
    }
    rendered = render(chart, values)
    (scaled,) = rendered.of_kind("ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["address"] == address
    assert trigger["metadata"].get("enableTLS") == tls
    assert trigger["metadata"]["databaseIndex"] == (
        url.rsplit("/", 1)[-1] if url.count("/") > 2 else "0"
    )
    # No password Secret for this Redis: no TriggerAuthentication, no reference to one.
    assert rendered.of_kind("TriggerAuthentication") == []
    assert "authenticationRef" not in trigger


def test_external_sentinels_with_tls_reach_every_component(chart: helm.Chart) -> None:
    sentinels = [f"redis-node-{i}.redis-headless.redis.svc:26379" for i in range(3)]
    values = {
        "redis": {
            "enabled": False,
            "external": {
                "existingSecret": "redis-auth",
                "sentinel": {
                    "hosts": sentinels,
                    "masterName": "mymaster",
                    "db": 2,
                    "existingSecret": "sentinel-auth",
                },
                "tls": {"enabled": True, "existingSecret": "redis-tls", "clientCertificate": True},
            },
        },
        "worker": {"keda": {"enabled": True}},
    }
    rendered = render(chart, values)
    config = rendered.get("ConfigMap", "forwarder")["data"]
    assert "FORWARDER_REDIS_URL" not in config
    assert config["FORWARDER_REDIS_SENTINELS"] == ",".join(sentinels)
    assert config["FORWARDER_REDIS_SENTINEL_MASTER"] == "mymaster"
    assert config["FORWARDER_REDIS_SENTINEL_DB"] == "2"
    assert config["FORWARDER_REDIS_TLS"] == "true"
    assert config["FORWARDER_REDIS_TLS_CA_FILE"] == "/etc/forwarder/redis-tls/ca.crt"
    assert config["FORWARDER_REDIS_TLS_CERT_FILE"] == "/etc/forwarder/redis-tls/tls.crt"
    assert config["FORWARDER_REDIS_TLS_KEY_FILE"] == "/etc/forwarder/redis-tls/tls.key"
    deployments = rendered.of_kind("Deployment")
    assert {d["metadata"]["name"] for d in deployments} >= {
        f"forwarder-{c}" for c in ("worker", "beat", "api", "operator", "flower")
    }
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["FORWARDER_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "sentinel-auth",
            "key": "password",
        }
        assert {"name": "redis-tls", "secret": {"secretName": "redis-tls"}} in pod["volumes"]
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "redis-tls", "mountPath": "/etc/forwarder/redis-tls", "readOnly": True} in (
            mounts
        )
    (scaled,) = rendered.of_kind("ScaledObject")
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "redis-sentinel"
        assert trigger["metadata"]["addresses"] == ",".join(sentinels)
        assert trigger["metadata"]["sentinelMaster"] == "mymaster"
        assert trigger["metadata"]["databaseIndex"] == "2"
        assert trigger["metadata"]["enableTLS"] == "true"
    (auth,) = rendered.of_kind("TriggerAuthentication")
    assert [p["parameter"] for p in auth["spec"]["secretTargetRef"]] == [
        "password",
        "sentinelPassword",
    ]
