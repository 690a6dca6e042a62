"""The chart's monitoring objects for tests: the alert rules and the Grafana dashboard, and the
``forwarder_*`` metric names they read.

Rule expressions and dashboard queries name metrics as Prometheus stores them: a counter with
its ``_total``, a histogram's ``_bucket``/``_sum``/``_count`` series. :func:`metric_name` maps a
histogram's series to the histogram's own name, so every name can be looked up in the api's
``/metrics`` exposition (see :func:`exposed_names`) and in :data:`KNOWN_METRICS`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import helm_python as helm

from support.chart import CHART, render

DASHBOARD = CHART / "dashboards" / "forwarder.json"
# Every monitoring object on, with the chart's default thresholds.
MONITORING_VALUES: dict[str, Any] = {
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    }
}
HISTOGRAMS = {
    "forwarder_scheduler_lateness_seconds",
    "forwarder_task_duration_seconds",
    "forwarder_api_request_duration_seconds",
}
# The metrics the rules and the dashboard may read: the api's (api/forwarder_api/metrics.py)
# plus the per-schedule and worker figures of issue 20, under the names they are exposed with.
KNOWN_METRICS = HISTOGRAMS | {
    "forwarder_schedule_last_success_timestamp_seconds",
    "forwarder_schedule_last_run_timestamp_seconds",
    "forwarder_schedule_consecutive_failures",
    "forwarder_schedule_runs_total",
    "forwarder_schedule_missed_slots_total",
    "forwarder_schedule_excluded_slots_total",
    "forwarder_schedule_next_run_timestamp_seconds",
    "forwarder_schedule_period_seconds",
    "forwarder_schedule_suspended",
    "forwarder_scheduler_fired_total",
    "forwarder_scheduler_missed_total",
    "forwarder_scheduler_skipped_total",
    "forwarder_schedules",
    "forwarder_queue_length",
    "forwarder_workers",
    "forwarder_beat_lock_held",
    "forwarder_api_redis_up",
    "forwarder_api_requests_total",
}
_NAME = re.compile(r"(?<![A-Za-z0-9_:])forwarder_[A-Za-z0-9_:]*")
_HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def metric_name(series: str) -> str:
    """The metric a series name belongs to: a histogram's own name for its ``_bucket``,
    ``_sum`` and ``_count`` series, the name itself otherwise."""
    base = _HISTOGRAM_SERIES.sub("", series)
    return base if base in HISTOGRAMS else series


def names_in(expressions: Iterable[str]) -> set[str]:
    """Every ``forwarder_*`` metric named in ``expressions`` (PromQL)."""
    return {metric_name(found) for expr in expressions for found in _NAME.findall(expr)}


def prometheus_rule(chart: helm.Chart, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chart's PrometheusRule, rendered with every monitoring object on (plus ``values``
    at the top level, merged one level deep into ``metrics``)."""
    merged = {**MONITORING_VALUES, **(values or {})}
    merged["metrics"] = {**MONITORING_VALUES["metrics"], **(values or {}).get("metrics", {})}
    (rule,) = render(chart, merged).of_kind("PrometheusRule")
    return rule


def rule_expressions(rule: dict[str, Any]) -> list[str]:
    return [str(r["expr"]) for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions(board: dict[str, Any]) -> list[str]:
    """The PromQL of every panel target and of every query variable."""
    exprs = [
        str(target["expr"])
        for panel in dashboard_panels(board)
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            exprs.append(str(query["query"] if isinstance(query, dict) else query))
    return exprs


def monitored_names(chart: helm.Chart) -> set[str]:
    """Every ``forwarder_*`` metric the alert rules or the dashboard read."""
    return names_in(rule_expressions(prometheus_rule(chart))) | names_in(
        dashboard_expressions(dashboard())
    )


def exposed_names(exposition: str) -> set[str]:
    """The metric names in a ``/metrics`` text exposition, histograms by their own name."""
    names = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            names.add(metric_name(re.split(r"[{ ]", line, maxsplit=1)[0]))
    return names
