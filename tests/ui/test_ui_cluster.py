"""The dashboard in a cluster: the same pages in headless Chromium, the api in cluster mode.

On the real kube-apiserver and etcd, charts/forwarder is installed with ``watchNamespaces``
(``scoped_release``); the real kopf operator, a worker and beat run on an embedded Redis, the
operator as the chart's operator ServiceAccount; and ``forwarder api`` runs as a real HTTP
server with ``FORWARDER_SCHEDULES_MODE=kubernetes`` and a kubeconfig of the chart's api
ServiceAccount, serving the watched namespaces as the chart sets it up. A ScheduledTask made
with kubectl shows up in the browser; run-now, backfill and resume after failures are the
annotations the operator acts on, what they do arriving on the page without a reload; suspend
and resume change the resource; a namespace the api does not serve is the API's 403 on the
page, nothing worse.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect
from support.api_process import start_api
from support.chart_release import Release
from support.controlplane import ControlPlane
from support.dashboard import Watched, opened_page, sign_in
from support.operator_process import operator_env, running_operator
from support.processes import celery_beat, celery_worker, eventually, forwarder_env, free_port
from support.processes import running as running_procs
from support.scheduled_tasks import kubectl_apply, kubectl_get

pytestmark = [pytest.mark.ui, pytest.mark.cluster]

TOKEN = "ui-cluster-token-0123456789"
DAILY = {
    "task": "forwarder.ping",
    "kwargs": {"via": "dashboard"},
    "schedule": {"cron": "0 4 * * *"},
}
NIGHTLY = {"task": "forwarder.ping", "schedule": {"cron": "0 3 * * *"}}
# Fails at each firing, and is suspended after two in a row.
FRAGILE = {
    "task": "tests.fail",
    "kwargs": {"message": "the upstream is down"},
    "schedule": {"every": "5s"},
    "suspendAfterFailures": 2,
}


@dataclass
class Cluster:
    """The running cluster side: the control plane, the api's address, what it serves."""

    plane: ControlPlane
    api_url: str
    served: list[str]
    outside: str


@pytest.fixture
def cluster(
    redis_url: str,
    crds: ControlPlane,
    namespace: str,
    watch_namespaces: list[str],
    scoped_release: Release,
    logs: Path,
) -> Iterator[Cluster]:
    """The operator, a worker and beat, and the api serving ``watch_namespaces``, each as the
    chart's ServiceAccount would run it; all stopped after the test (and the operator's log
    checked for any request the apiserver refused it)."""
    env = operator_env(redis_url, scoped_release.kubeconfig("operator"), watch_namespaces)
    api_env = forwarder_env(
        redis_url,
        FORWARDER_API_TOKENS=TOKEN,
        FORWARDER_SCHEDULES_MODE="kubernetes",
        FORWARDER_KUBECONFIG=str(scoped_release.kubeconfig("api")),
        # What the chart sets from watchNamespaces.
        FORWARDER_API_NAMESPACES=",".join(watch_namespaces),
    )
    port = free_port()
    with running_operator(env, logs / "operator.log"):
        worker = celery_worker(env, logs / "worker.log")
        beat = celery_beat(env, logs / "beat.log")
        with running_procs(worker, beat):
            api = start_api(api_env, logs / "api.log", port)
            with running_procs(api):
                eventually(lambda: " ready." in worker.output(), 60, 0.2, "worker ready")
                yield Cluster(
                    crds,
                    f"http://127.0.0.1:{port}",
                    watch_namespaces,
                    f"{namespace}-c",  # made by watch_namespaces, left out of them
                )


def resource(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    """ScheduledTask ``namespace/name`` as kubectl reads it back."""
    found = kubectl_get(plane, namespace, name)
    assert found is not None, f"{namespace}/{name} is gone"
    return found


def test_the_dashboard_on_a_cluster(cluster: Cluster, browser: Browser, watched: Watched) -> None:
    """One test in steps on one page: the cluster side takes about 10 s to set up and stop,
    and every step but the first acts on what the ones before it made."""
    plane = cluster.plane
    first, second = cluster.served
    with opened_page(browser, cluster.api_url, watched) as page:
        sign_in(page, TOKEN)
        _schedules_from_kubectl_and_the_namespace_filter(page, plane, first, second)
        _run_now_through_the_operator(page, plane, first)
        _suspend_and_resume(page, plane, first)
        _backfill_through_the_operator(page, plane, first)
        _resume_after_failures_through_the_operator(page, plane, first)
        assert watched.console_errors == []
        _a_namespace_not_served_is_the_apis_403(page, plane, cluster.outside)
    # The only console errors: Chromium's own line for each 403 the page was answered.
    assert watched.console_errors
    assert all("status of 403" in line for line in watched.console_errors), watched
    assert watched.dialogs == []


def _schedules_from_kubectl_and_the_namespace_filter(
    page: Page, plane: ControlPlane, first: str, second: str
) -> None:
    rows = page.locator("#schedules tbody tr")
    kubectl_apply(plane, first, "report", DAILY)
    kubectl_apply(plane, second, "nightly", NIGHTLY)
    # Listed without a reload, with its namespace, and its schedule in words (the operator's).
    # The list asks again every 5 s (page-schedules.js), so a row can take that long plus the
    # request to show: more than expect's default 5 s on a busy machine.
    report = page.locator(f'#schedules tr[data-schedule="{first}/report"]')
    expect(report).to_contain_text(f"{first}/report", timeout=15_000)
    expect(report).to_contain_text("cron 0 4 * * *", timeout=15_000)
    expect(rows).to_have_count(2, timeout=15_000)
    expect(page.locator("#filter-namespace option")).to_have_text(["all namespaces", first, second])
    page.locator("#filter-namespace").select_option(second)
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text(f"{second}/nightly")
    page.locator("#filter-namespace").select_option("")
    expect(rows).to_have_count(2)
    report.get_by_role("link", name=re.compile("report")).click()
    expect(page.locator(".page-head h1")).to_have_text(f"{first}/report")
    expect(page.locator(".condition")).to_contain_text("True · Scheduled")
    expect(page.locator("#preview tbody tr")).to_have_count(10)


def _run_now_through_the_operator(page: Page, plane: ControlPlane, namespace: str) -> None:
    page.get_by_text("with kwargs").click()
    page.locator("#run-kwargs").fill('{"who": "the cluster"}')
    page.get_by_role("button", name="Run now").click()
    # In a cluster the api sets the annotation and answers no run id: the page says so.
    message = page.locator(".message.info")
    expect(message).to_contain_text("Run-now requested (forwarder.dev/run-now=")
    expect(message).to_contain_text("the operator fires it")
    found = re.search(r"run-now=([^)]+)\)", message.inner_text())
    assert found, message.inner_text()
    annotations = resource(plane, namespace, "report")["metadata"]["annotations"]
    assert annotations["forwarder.dev/run-now"] == found.group(1)
    # The operator fires it, the worker runs it: on the timeline, then SUCCESS, no reload.
    row = page.locator("#timeline tr.run-row", has_text="trigger")
    expect(row).to_have_count(1, timeout=30_000)
    expect(row.locator(".badge")).to_have_text("SUCCESS", timeout=30_000)
    expect(page.locator('[data-count="succeededRunCount"] .tile-value')).to_have_text("1")
    # Its run page, from the timeline's link.
    row.get_by_role("link").click()
    expect(page.locator("#run-source")).to_contain_text("trigger — run now")
    # The spec's kwargs with the form's merged over them.
    expect(page.locator("#result")).to_contain_text('"via": "dashboard"')
    expect(page.locator("#result")).to_contain_text('"who": "the cluster"')
    page.go_back()
    expect(page.locator(".page-head h1")).to_have_text(f"{namespace}/report")


def _suspend_and_resume(page: Page, plane: ControlPlane, namespace: str) -> None:
    page.get_by_role("button", name="Suspend").click()
    expect(page.locator(".message.info")).to_contain_text(f"{namespace}/report suspended")
    expect(page.locator(".page-head .badge.suspended")).to_be_visible()
    assert resource(plane, namespace, "report")["spec"]["suspend"] is True
    # The operator takes it off the schedule and says so in Ready, which the page follows.
    expect(page.locator(".condition")).to_contain_text("· Suspended — cron 0 4 * * * is suspended")

    page.get_by_role("button", name="Resume").click()
    expect(page.locator(".message.info")).to_contain_text(f"{namespace}/report resumed")
    expect(page.locator(".page-head .badge.suspended")).to_have_count(0)
    assert resource(plane, namespace, "report")["spec"]["suspend"] is False
    expect(page.locator(".condition")).to_contain_text("True · Scheduled")


def _backfill_through_the_operator(page: Page, plane: ControlPlane, namespace: str) -> None:
    # A window of three days holds three 04:00 slots; the operator runs them.
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    page.locator("summary", has_text="Backfill").click()
    page.locator("#backfill-start").fill(f"{hour - timedelta(days=3):%Y-%m-%dT%H:%M:%SZ}")
    page.locator("#backfill-end").fill(f"{hour:%Y-%m-%dT%H:%M:%SZ}")
    page.get_by_role("button", name="Backfill window").click()
    message = page.locator(".message.info")
    expect(message).to_contain_text("Backfill requested (forwarder.dev/backfill=")
    annotations = resource(plane, namespace, "report")["metadata"]["annotations"]
    assert annotations["forwarder.dev/backfill"] in message.inner_text()
    backfilled = page.locator("#timeline tr.run-row", has_text="backfill")
    expect(backfilled).to_have_count(3, timeout=30_000)
    for index in range(3):
        expect(backfilled.nth(index).locator(".badge")).to_have_text("SUCCESS")


def _resume_after_failures_through_the_operator(
    page: Page, plane: ControlPlane, namespace: str
) -> None:
    kubectl_apply(plane, namespace, "fragile", FRAGILE)
    page.goto(f"/ui/#/schedules/{namespace}/fragile")
    badge = page.locator(".page-head .badge.suspended")
    expect(badge).to_have_text("suspended after failures", timeout=30_000)
    page.get_by_role("button", name="Resume").click()
    # The api sets the annotation (no resume of its own): the page says so, with its value.
    message = page.locator(".message.info")
    expect(message).to_contain_text("Resume requested (forwarder.dev/resume=")
    annotations = resource(plane, namespace, "fragile")["metadata"]["annotations"]
    assert f"forwarder.dev/resume={annotations['forwarder.dev/resume']})" in message.inner_text()
    # The operator resumes it, and the page follows.
    expect(badge).to_have_count(0)


def _a_namespace_not_served_is_the_apis_403(page: Page, plane: ControlPlane, outside: str) -> None:
    # The resource exists, but the api does not serve its namespace (nor may its Roles).
    kubectl_apply(plane, outside, "elsewhere", NIGHTLY)
    page.goto(f"/ui/#/schedules/{outside}/elsewhere")
    error = page.locator(".message.error")
    expect(error).to_contain_text(f"403: namespace '{outside}' is not served here")
    expect(page.locator(".crumbs")).to_contain_text(f"{outside}/elsewhere")
    expect(page.get_by_role("button", name="Run now")).to_have_count(0)
    # Back to the list: still the served namespaces' schedules, and no error left.
    page.locator(".crumbs a", has_text="Schedules").click()
    expect(page.locator("#schedules tbody tr")).to_have_count(3)
    expect(page.locator(".message.error")).to_have_count(0)
    assert resource(plane, outside, "elsewhere")["spec"].get("suspend") in (None, False)
