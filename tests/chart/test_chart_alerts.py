"""The chart's monitoring objects: the ServiceMonitor, the PrometheusRule and the Grafana
dashboard, each off by default.

The Prometheus Operator's CRDs are not in the test control plane (and cannot be fetched
offline), so the two custom objects are checked for shape here against the fields the operator
documents. The rules go through Prometheus's own tools: ``promtool check rules`` parses every
expression and template, and ``promtool test rules`` runs tests/chart/alerts/*.test.yaml, where
every alert fires on one set of synthetic series and stays quiet on another. Dashboard queries
are parsed the same way, each wrapped as a recording rule.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from support.chart import render
from support.monitoring import (
    DASHBOARD,
    KNOWN_METRICS,
    MONITORING_VALUES,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    exposed_names,
    metric_name,
    monitored_names,
    names_in,
    prometheus_rule,
    rule_expressions,
)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
UNIT_TESTS = Path(__file__).parent / "alerts" / "forwarder-alerts.test.yaml"
ALERTS = {
    "ScheduleFailing",
    "ScheduleMissedRuns",
    "ScheduleStale",
    "BeatNotFiring",
    "NoWorkers",
    "QueueBacklog",
    "ForwarderRedisDown",
    "ForwarderMetricsAbsent",
}
# Prometheus's duration syntax, which the PrometheusRule CRD's `for` pattern follows.
DURATION = re.compile(r"^(0|(\d+(ms|s|m|h|d|w|y))+)$")
# Fields of the Prometheus Operator's ServiceMonitor spec and endpoint (monitoring.coreos.com/v1)
# that the chart may set: a misspelt one would be dropped by the apiserver's pruning.
SERVICE_MONITOR_SPEC = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels"}
ENDPOINT_FIELDS = {
    "port",
    "path",
    "scheme",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "authorization",
    "relabelings",
    "metricRelabelings",
}
RULE_FIELDS = {"alert", "expr", "for", "labels", "annotations"}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def write_rules(rule: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def monitoring_kinds(rendered: Any) -> list[str]:
    kinds = [
        o["kind"] for o in rendered.objects if o["kind"] in {"ServiceMonitor", "PrometheusRule"}
    ]
    dashboards = [o for o in rendered.of_kind("ConfigMap") if "forwarder.json" in o.get("data", {})]
    return kinds + ["dashboard"] * len(dashboards)


# -- off by default ---------------------------------------------------------------------------


def test_nothing_for_monitoring_is_rendered_by_default(chart: helm.Chart) -> None:
    default = render(chart)
    assert monitoring_kinds(default) == []
    api = default.get("Deployment", "forwarder-api")["spec"]["template"]["spec"]["containers"][0]
    assert "FORWARDER_API_METRICS_AUTH" not in {e["name"] for e in api["env"]}
    assert sorted(monitoring_kinds(render(chart, MONITORING_VALUES))) == [
        "PrometheusRule",
        "ServiceMonitor",
        "dashboard",
    ]


# -- ServiceMonitor ---------------------------------------------------------------------------


def test_service_monitor_scrapes_every_api_pod_keeping_the_metrics_labels(
    chart: helm.Chart,
) -> None:
    rendered = render(chart, MONITORING_VALUES)
    (monitor,) = rendered.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= SERVICE_MONITOR_SPEC
    service = rendered.get("Service", "forwarder-api")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    # It selects the api's Service only, not Flower's or Redis's.
    for other in rendered.of_kind("Service"):
        if other is not service:
            assert not selector.items() <= other["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["forwarder"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= ENDPOINT_FIELDS
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (endpoint["path"], endpoint["honorLabels"]) == ("/metrics", True)
    assert DURATION.match(endpoint["interval"]) and DURATION.match(endpoint["scrapeTimeout"])
    # /metrics is open unless metrics.requireToken: no token to send.
    assert "authorization" not in endpoint


def test_service_monitor_sends_the_api_token_from_a_secret_when_metrics_need_one(
    chart: helm.Chart,
) -> None:
    values = {"metrics": {"requireToken": True, "serviceMonitor": {"enabled": True}}}
    rendered = render(chart, values)
    api = rendered.get("Deployment", "forwarder-api")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in api["env"]}
    assert env["FORWARDER_API_METRICS_AUTH"]["value"] == "true"
    (monitor,) = rendered.of_kind("ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "forwarder-api", "key": "tokens"},
    }
    # The key the api reads its tokens from, in the Secret the chart generated.
    assert env["FORWARDER_API_TOKENS"]["valueFrom"]["secretKeyRef"] == {
        "name": "forwarder-api",
        "key": "tokens",
    }
    assert "tokens" in rendered.get("Secret", "forwarder-api")["data"]
    # Another Secret (one token per key), and the monitor's own labels.
    values["metrics"]["serviceMonitor"] |= {
        "tokenSecret": {"name": "prometheus-scrape", "key": "token"},
        "labels": {"release": "kube-prometheus-stack"},
    }
    (monitor,) = render(chart, values).of_kind("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"] == {
        "name": "prometheus-scrape",
        "key": "token",
    }
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Never a literal token, in any of the Operator's spellings.
    text = json.dumps(monitor)
    assert "bearerToken" not in text and "basicAuth" not in text


# -- PrometheusRule ---------------------------------------------------------------------------


def test_prometheus_rule_has_every_alert_with_severity_summary_and_description(
    chart: helm.Chart,
) -> None:
    rule = prometheus_rule(chart)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    names = set()
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"], group["name"]
        for each in group["rules"]:
            assert set(each) == RULE_FIELDS, each
            assert isinstance(each["expr"], str) and "forwarder_" in each["expr"]
            assert DURATION.match(each["for"]), each
            assert each["labels"]["severity"] in {"critical", "warning", "info"}
            assert {"summary", "description"} <= set(each["annotations"])
            names.add(each["alert"])
    assert names == ALERTS
    # Rules sharing an alert name differ in a label (promtool's lint rejects duplicates).
    keys = [
        (r["alert"], tuple(sorted(r["labels"].items())))
        for g in rule["spec"]["groups"]
        for r in g["rules"]
    ]
    assert len(keys) == len(set(keys))


def test_thresholds_labels_and_runbook_come_from_values(chart: helm.Chart, tmp_path: Path) -> None:
    values = {
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "labels": {"release": "kube-prometheus-stack"},
                "alertLabels": {"team": "platform"},
                "runbookUrl": "https://example.com/alerts.md",
                "selector": 'job="forwarder", namespace="ops"',
                "scheduleFailing": {"failures": 5, "for": "2m", "severity": "critical"},
                "scheduleMissedRuns": {"window": "1h"},
                "scheduleStale": {"periods": 2.5},
                "beatNotFiring": {"overdueSeconds": 90},
                "queueBacklog": {"length": 7, "for": "30m"},
            }
        }
    }
    rule = prometheus_rule(chart, values)
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    by_name: dict[str, list[dict[str, Any]]] = {}
    for group in rule["spec"]["groups"]:
        for each in group["rules"]:
            by_name.setdefault(each["alert"], []).append(each)
            assert each["labels"]["team"] == "platform"
            assert each["annotations"]["runbook_url"] == (
                f"https://example.com/alerts.md#{each['alert'].lower()}"
            )
            assert 'job="forwarder", namespace="ops"' in each["expr"]
            assert 'job="forwarder-api"' not in each["expr"]
    (failing,) = by_name["ScheduleFailing"]
    assert failing["expr"].endswith(">= 5")
    assert (failing["for"], failing["labels"]["severity"]) == ("2m", "critical")
    assert "[1h]" in by_name["ScheduleMissedRuns"][0]["expr"]
    assert all("2.5" in r["expr"] for r in by_name["ScheduleStale"])
    assert "> 90" in by_name["BeatNotFiring"][1]["expr"]
    (backlog,) = by_name["QueueBacklog"]
    assert backlog["expr"].endswith("> 7") and backlog["for"] == "30m"
    # Other values still make rules Prometheus accepts.
    checked = promtool("check", "rules", str(write_rules(rule, tmp_path / "r.yaml")), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_checks_the_rules(chart: helm.Chart, tmp_path: Path) -> None:
    rules = write_rules(prometheus_rule(chart), tmp_path / "rules.yaml")
    checked = promtool("check", "rules", str(rules), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {sum(1 for _ in rules.read_text().split('- alert:')) - 1} rules found" in (
        checked.stdout
    )


def test_every_alert_fires_and_holds_in_promtool_unit_tests(
    chart: helm.Chart, tmp_path: Path
) -> None:
    suite = yaml.safe_load(UNIT_TESTS.read_text())
    firing, quiet = set(), set()
    for group in suite["tests"]:
        for case in group["alert_rule_test"]:
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing == ALERTS, f"no firing case for {ALERTS - firing}"
    assert quiet == ALERTS, f"no quiet case for {ALERTS - quiet}"

    write_rules(prometheus_rule(chart), tmp_path / "rules.yaml")
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    tested = promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


# -- Grafana dashboard -------------------------------------------------------------------------


def test_dashboard_config_map_carries_the_charts_json_for_the_sidecar(chart: helm.Chart) -> None:
    rendered = render(chart, MONITORING_VALUES)
    config = rendered.get("ConfigMap", "forwarder-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config["data"]["forwarder.json"]) == json.loads(DASHBOARD.read_text())
    values = {
        "metrics": {
            "grafanaDashboard": {
                "enabled": True,
                "sidecarLabel": "grafana.com/dashboard",
                "sidecarLabelValue": "forwarder",
                "labels": {"team": "platform"},
                "annotations": {"grafana_folder": "Forwarder"},
            }
        }
    }
    config = render(chart, values).get("ConfigMap", "forwarder-dashboard")
    labels = config["metadata"]["labels"]
    assert labels["grafana.com/dashboard"] == "forwarder" and labels["team"] == "platform"
    assert "grafana_dashboard" not in labels
    assert config["metadata"]["annotations"] == {"grafana_folder": "Forwarder"}


def test_dashboard_has_the_panels_an_operator_needs() -> None:
    board = dashboard()
    assert board["uid"] == "forwarder" and isinstance(board["schemaVersion"], int)
    panels = list(dashboard_panels(board))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in panels}
    assert {
        "Schedules by state",
        "Firings, skipped and missed slots",
        "Firing lateness",
        "Failing and stale schedules",
        "Run duration by task (p90)",
        "Queue length by queue",
        "Workers",
        "Beat lock",
        "API requests by route and status",
        "API latency by route (p99)",
    } <= titles
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"] for t in panel["targets"])


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    # promtool 2.42 has no query parser command: each query becomes a recording rule, with
    # Grafana's variables replaced by what they stand for.
    grafana = {"$__rate_interval": "5m", "$job": ".+", "$namespace": ".*"}
    rules = []
    for index, expr in enumerate(dashboard_expressions(dashboard())):
        label_values = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr)
        query = label_values.group(1) if label_values else expr
        for variable, value in grafana.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        rules.append({"record": f"dashboard:query_{index}", "expr": query})
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", str(path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- metric names ------------------------------------------------------------------------------


def test_metric_names_are_read_as_exposed() -> None:
    assert (
        metric_name("forwarder_task_duration_seconds_bucket") == "forwarder_task_duration_seconds"
    )
    assert metric_name("forwarder_scheduler_lateness_seconds_count") == (
        "forwarder_scheduler_lateness_seconds"
    )
    assert metric_name("forwarder_schedule_runs_total") == "forwarder_schedule_runs_total"
    expr = (
        "histogram_quantile(0.9, sum by (le) (rate(forwarder_api_request_duration_seconds_bucket"
        '{job="forwarder-api"}[5m]))) / on() forwarder_workers'
    )
    assert names_in([expr]) == {"forwarder_api_request_duration_seconds", "forwarder_workers"}
    exposition = (
        "# HELP forwarder_workers Workers\n# TYPE forwarder_workers gauge\nforwarder_workers 2.0\n"
        'forwarder_api_request_duration_seconds_bucket{le="0.1"} 3.0\n'
        "forwarder_scheduler_fired_total 4.0\n"
    )
    assert exposed_names(exposition) == {
        "forwarder_workers",
        "forwarder_api_request_duration_seconds",
        "forwarder_scheduler_fired_total",
    }


def test_rules_and_dashboard_read_only_known_metrics(chart: helm.Chart) -> None:
    named = monitored_names(chart)
    assert named - KNOWN_METRICS == set()
    rules = names_in(rule_expressions(prometheus_rule(chart)))
    assert {"forwarder_schedule_consecutive_failures", "forwarder_api_redis_up"} <= rules
    assert "forwarder_task_duration_seconds" in names_in(dashboard_expressions(dashboard()))
