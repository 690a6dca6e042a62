"""Schedules through the Kubernetes API, on the real control plane: the api writes ScheduledTask
resources as the chart's api ServiceAccount, the real kopf operator (a subprocess, as the
chart's operator ServiceAccount) turns them into entries and status, and a real worker runs
what run-now fires. The API never writes schedule entries itself, and neither process holds
admin credentials: the chart's RBAC is all they have (tests/api/conftest.py installs it).

Where the api may not act, the client gets a 403 that says why: a namespace outside
``FORWARDER_API_NAMESPACES`` (which the chart sets from ``watchNamespaces``), or a request its
RBAC refuses. With ``watchNamespaces``, ``GET /schedules`` lists those namespaces one by one;
a cluster-wide list is what the Roles refuse.
"""

from __future__ import annotations

import http.server
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from forwarder_api.main import create_app
from forwarder_api.settings import ApiSettings
from pydantic import SecretStr
from support.chart_release import Ref, Release
from support.controlplane import ControlPlane
from support.http_stub import serving, stub_kubeconfig
from support.operator_process import refusals
from support.processes import celery_worker, eventually, forwarder_env, running, start

pytestmark = pytest.mark.cluster

TOKEN = "cluster-token"
FAST = {
    "FORWARDER_OPERATOR_STATUS_INTERVAL": "0.3",
    "FORWARDER_OPERATOR_SWEEP_INTERVAL": "2",
}
SPEC = {"task": "forwarder.ping", "schedule": {"every": "1h"}}


def cluster_settings(redis_url: str, kubeconfig: Path, **extra: Any) -> ApiSettings:
    """The api's settings in cluster mode, with the given kubeconfig."""
    return ApiSettings(
        redis_url=redis_url,
        api_tokens=[SecretStr(TOKEN)],
        task_modules=["support.sample_tasks"],
        schedules_mode="kubernetes",
        kubeconfig=kubeconfig,
        **extra,
    )


def api_client(settings: ApiSettings) -> TestClient:
    return TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def api(redis_url: str, chart_release: Release) -> Iterator[TestClient]:
    """The api as the chart's api ServiceAccount (cluster-wide ClusterRole)."""
    settings = cluster_settings(redis_url, chart_release.kubeconfig("api"))
    with api_client(settings) as client:
        yield client


def ready_reason(api: TestClient, namespace: str, name: str) -> str | None:
    status = api.get(f"/schedules/{namespace}/{name}").json().get("status") or {}
    conditions = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return conditions[0]["reason"] if conditions else None


def names_in(plane: ControlPlane, namespace: str) -> list[str]:
    """The ScheduledTasks of ``namespace``, as the admin sees them with kubectl."""
    listed = json.loads(plane.kubectl("get", "st", "-n", namespace, "-o", "json").stdout)
    return [item["metadata"]["name"] for item in listed["items"]]


def test_crud_and_trigger_through_the_operator(
    redis_url: str,
    rclient: redis.Redis,
    crds: ControlPlane,
    namespace: str,
    chart_release: Release,
    api: TestClient,
    logs: Path,
) -> None:
    mlops = f"{namespace}-mlops"
    crds.create_namespace(mlops)
    kubeconfig = chart_release.kubeconfig("operator")
    env = forwarder_env(redis_url, KUBECONFIG=str(kubeconfig), **FAST)
    operator = start([sys.executable, "-m", "forwarder_operator"], env, logs / "op.log", "operator")
    worker = celery_worker(env, logs / "worker.log")
    with running(operator, worker):
        spec = {
            "task": "forwarder.ping",
            "kwargs": {"via": "api"},
            "schedule": {"cron": "0 4 * * *"},
        }
        created = api.post(
            "/schedules",
            json={"metadata": {"name": "report", "namespace": mlops}, "spec": spec},
        )
        assert created.status_code == 201, created.text
        assert created.json()["metadata"]["uid"]
        # It is a real resource: kubectl sees it.
        assert names_in(crds, mlops) == ["report"]

        eventually(lambda: ready_reason(api, mlops, "report") == "Scheduled", 60, 0.2, "Scheduled")
        assert rclient.zscore("forwarder::schedule", f"forwarder:{mlops}/report") is not None
        body = api.get(f"/schedules/{mlops}/report").json()
        # The apiserver filled in the CRD's defaults.
        assert body["spec"] == {**body["spec"], **spec}
        assert body["spec"]["concurrencyPolicy"] == "Allow"
        assert body["status"]["nextRunTime"].endswith("T04:00:00Z")
        # The preview: the live entry's next fire times, as status.nextRunTimes lists them.
        preview = api.get(f"/schedules/{mlops}/report/preview", params={"count": 7}).json()
        times = [item["utc"] for item in preview["items"]]
        assert len(times) == 7 and all(t.endswith("T04:00:00Z") for t in times)
        assert preview["timeZone"] == "UTC"
        assert body["status"]["nextRunTimes"] == times[:5]
        assert times[0] == body["status"]["nextRunTime"]
        # Every namespace's (other tests' too, in this shared control plane), sorted.
        items = [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in api.get(
            "/schedules"
        ).json()["items"]]  # fmt: skip
        assert (mlops, "report") in items and items == sorted(items)
        listed = api.get("/schedules", params={"namespace": mlops}).json()["items"]
        assert [i["metadata"]["name"] for i in listed] == ["report"]
        assert api.get("/schedules", params={"namespace": f"{namespace}-other"}).json() == {
            "items": []
        }

        duplicate = api.post(
            "/schedules",
            json={"metadata": {"name": "report", "namespace": mlops}, "spec": spec},
        )
        assert duplicate.status_code == 409

        bad = api.patch(
            f"/schedules/{mlops}/report", json={"spec": {"schedule": {"cron": "61 * * * *"}}}
        )
        assert bad.status_code == 422
        assert (
            bad.json()["detail"]
            == "spec.schedule.cron: '61 * * * *' is not a valid cron expression"
        )

        patched = api.patch(f"/schedules/{mlops}/report", json={"spec": {"suspend": True}})
        assert patched.status_code == 200, patched.text
        assert patched.json()["spec"]["suspend"] is True
        eventually(lambda: ready_reason(api, mlops, "report") == "Suspended", 60, 0.2, "Suspended")
        assert rclient.zscore("forwarder::schedule", f"forwarder:{mlops}/report") is None

        triggered = api.post(f"/schedules/{mlops}/report/trigger")
        assert triggered.status_code == 202, triggered.text
        value = triggered.json()["runNow"]
        assert value and triggered.json()["id"] is None
        annotations = api.get(f"/schedules/{mlops}/report").json()["metadata"]["annotations"]
        assert annotations["forwarder.dev/run-now"] == value

        def triggered_run() -> list[dict[str, Any]]:
            runs: list[dict[str, Any]] = api.get(
                "/runs", params={"schedule": f"{mlops}/report", "state": "SUCCESS"}
            ).json()["items"]
            return runs

        (run,) = eventually(triggered_run, 60, 0.2, "the run-now run")
        assert run["source"] == "trigger" and run["result"]["kwargs"] == {"via": "api"}

        assert api.delete(f"/schedules/{mlops}/report").status_code == 204
        eventually(
            lambda: api.get(f"/schedules/{mlops}/report").status_code == 404, 60, 0.2, "gone"
        )
        eventually(lambda: not rclient.exists(f"forwarder:{mlops}/report"), 60, 0.2, "removed")
        assert api.delete(f"/schedules/{mlops}/report").status_code == 404
        assert refusals(operator.output()) == []


def test_invalid_specs_never_reach_the_cluster(
    crds: ControlPlane, namespace: str, api: TestClient
) -> None:
    response = api.post(
        "/schedules",
        json={
            "metadata": {"name": "bad", "namespace": namespace},
            "spec": {"task": "no.such", "schedule": {"every": 5}},
        },
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith("spec.task: 'no.such' is not a registered task")
    window = {"startTime": "2030-01-02T00:00:00Z", "endTime": "2030-01-01T00:00:00Z"}
    for extra, says in (
        (window, "spec.endTime: 2030-01-01T00:00:00+00:00 is not after startTime"),
        ({"maxRuns": -1}, "spec.maxRuns: Input should be greater than or equal to 1"),
        ({"exclusions": {"cron": ["61 * * * *"]}}, "spec.exclusions.cron[0]: '61 * * * *'"),
    ):
        spec = {"task": "forwarder.ping", "schedule": {"every": 5}, **extra}
        response = api.post(
            "/schedules", json={"metadata": {"name": "bad", "namespace": namespace}, "spec": spec}
        )
        assert response.status_code == 422
        assert response.json()["detail"].startswith(says)
    assert names_in(crds, namespace) == []
    assert api.get(f"/schedules/{namespace}/bad").status_code == 404
    assert api.post(f"/schedules/{namespace}/bad/trigger").status_code == 404


def test_unreachable_cluster_is_503(redis_url: str, tmp_path: Path) -> None:
    kubeconfig = stub_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")
    with api_client(cluster_settings(redis_url, kubeconfig, kube_timeout=2)) as client:
        response = client.get("/schedules")
        assert response.status_code == 503
        assert "the Kubernetes API is unreachable" in response.json()["detail"]
    with api_client(cluster_settings(redis_url, tmp_path / "nope")) as client:
        response = client.get("/schedules/default/x")
        assert response.status_code == 503
        assert response.json()["detail"].startswith("no Kubernetes configuration found")


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A server in front of no Kubernetes API: a proxy's refusals, one not in JSON and one
    without a Content-Type at all."""

    def do_GET(self) -> None:
        if self.path.startswith("/apis/forwarder.dev/v1alpha1/namespaces/bare/"):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(502, "upstream down")  # an HTML page

    def log_message(self, *args: Any) -> None:
        pass


def test_a_refusal_that_is_not_kubernetes_is_502(redis_url: str, tmp_path: Path) -> None:
    with serving(_Refusing) as url:
        kubeconfig = stub_kubeconfig(tmp_path / "kubeconfig", url)
        with api_client(cluster_settings(redis_url, kubeconfig)) as client:
            html = client.get("/schedules/default/x")
            assert html.status_code == 502, html.text
            assert "(Kubernetes API answered 502)" in html.json()["detail"]
            bare = client.get("/schedules/bare/x")
            assert bare.status_code == 502, bare.text
            assert "without a Content-Type" in bare.json()["detail"]


def served_namespaces(release: Release) -> list[str]:
    """What the chart sets FORWARDER_API_NAMESPACES to in the live api Deployment."""
    ref = Ref("Deployment", "apps", release.namespace, release.account("api"))
    (container,) = release.live()[ref]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return str(env["FORWARDER_API_NAMESPACES"]).split(",")


def test_served_namespaces_only(
    redis_url: str, crds: ControlPlane, watch_namespaces: list[str], scoped_release: Release
) -> None:
    """With the chart's ``watchNamespaces``, the api (its settings as the chart sets them, its
    Roles in those namespaces only) lists, writes and triggers there, and answers 403 with the
    reason anywhere else."""
    served = served_namespaces(scoped_release)
    assert served == watch_namespaces
    outside = watch_namespaces[0].removesuffix("-a") + "-c"
    settings = cluster_settings(redis_url, scoped_release.kubeconfig("api"), api_namespaces=served)
    with api_client(settings) as api:
        for each in watch_namespaces:
            created = api.post(
                "/schedules", json={"metadata": {"name": "job", "namespace": each}, "spec": SPEC}
            )
            assert created.status_code == 201, created.text
        # A resource exists outside, but this api does not serve that namespace.
        document = {"apiVersion": "forwarder.dev/v1alpha1", "kind": "ScheduledTask"}
        with crds.http() as admin:
            reply = admin.post(
                f"/apis/forwarder.dev/v1alpha1/namespaces/{outside}/scheduledtasks",
                json={**document, "metadata": {"name": "job"}, "spec": SPEC},
            )
            assert reply.status_code == 201, reply.text

        listed = api.get("/schedules")
        assert listed.status_code == 200, listed.text
        assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed.json()[
            "items"
        ]] == [(each, "job") for each in watch_namespaces]  # fmt: skip
        assert (
            len(api.get("/schedules", params={"namespace": watch_namespaces[1]}).json()["items"])
            == 1
        )
        # The Roles allow every verb the api uses.
        patched = api.patch(
            f"/schedules/{watch_namespaces[0]}/job", json={"spec": {"suspend": True}}
        )
        assert patched.status_code == 200, patched.text
        assert api.post(f"/schedules/{watch_namespaces[0]}/job/trigger").status_code == 202
        assert api.delete(f"/schedules/{watch_namespaces[0]}/job").status_code == 204

        for method, path, body in (
            ("GET", f"/schedules?namespace={outside}", None),
            ("GET", f"/schedules/{outside}/job", None),
            ("PATCH", f"/schedules/{outside}/job", {"spec": {"suspend": True}}),
            ("DELETE", f"/schedules/{outside}/job", None),
            ("POST", f"/schedules/{outside}/job/trigger", None),
            (
                "POST",
                "/schedules",
                {"metadata": {"name": "new", "namespace": outside}, "spec": SPEC},
            ),
        ):
            reply = api.request(method, path, json=body)
            assert reply.status_code == 403, (method, path, reply.text)
            detail = reply.json()["detail"]
            assert f"namespace {outside!r} is not served here" in detail, detail
            assert "FORWARDER_API_NAMESPACES" in detail
        assert names_in(crds, outside) == ["job"]
        untouched = json.loads(crds.kubectl("get", "st", "job", "-n", outside, "-o", "json").stdout)
        assert untouched["spec"]["suspend"] is False


def test_what_the_rbac_refuses_is_a_403_with_the_apiservers_reason(
    redis_url: str, crds: ControlPlane, watch_namespaces: list[str], scoped_release: Release
) -> None:
    """The api's Roles are in the watched namespaces only. Without FORWARDER_API_NAMESPACES
    (an api set up by hand), what they do not allow comes back from the apiserver as 403, and
    the api answers 403 with that reason, never a 5xx: a cluster-wide list, another
    namespace's resources."""
    outside = watch_namespaces[0].removesuffix("-a") + "-c"
    account = f"system:serviceaccount:{scoped_release.namespace}:{scoped_release.account('api')}"
    with api_client(cluster_settings(redis_url, scoped_release.kubeconfig("api"))) as api:
        created = api.post(
            "/schedules",
            json={"metadata": {"name": "job", "namespace": watch_namespaces[0]}, "spec": SPEC},
        )
        assert created.status_code == 201, created.text
        assert api.get(f"/schedules/{watch_namespaces[0]}/job").status_code == 200

        listed = api.get("/schedules")
        assert listed.status_code == 403, listed.text
        detail = listed.json()["detail"]
        assert detail.startswith("listing ScheduledTasks: ")
        assert f'User "{account}" cannot list resource "scheduledtasks"' in detail
        assert "at the cluster scope" in detail and "refused by the api's RBAC" in detail

        for method, path, body, verb in (
            ("GET", f"/schedules?namespace={outside}", None, "list"),
            ("GET", f"/schedules/{outside}/job", None, "get"),
            ("DELETE", f"/schedules/{outside}/job", None, "delete"),
            ("POST", f"/schedules/{outside}/job/trigger", None, "patch"),
            (
                "POST",
                "/schedules",
                {"metadata": {"name": "job", "namespace": outside}, "spec": SPEC},
                "create",
            ),
        ):
            reply = api.request(method, path, json=body)
            assert reply.status_code == 403, (method, path, reply.text)
            detail = reply.json()["detail"]
            assert f'cannot {verb} resource "scheduledtasks"' in detail, detail
            assert f'in the namespace "{outside}"' in detail, detail
        assert names_in(crds, outside) == []
