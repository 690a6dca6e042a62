"""Schedules through the Kubernetes API: the API writes ScheduledTask resources to the
emulated cluster, the real kopf operator (a subprocess) turns them into entries and status,
and a real worker runs what run-now fires. The API never writes schedule entries itself."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from forwarder_api.main import create_app
from forwarder_api.settings import ApiSettings
from support.kube_emulator import ServedCluster, served_emulator, write_kubeconfig
from support.processes import celery_worker, eventually, forwarder_env, running, start

pytestmark = pytest.mark.cluster

TOKEN = "cluster-token"
FAST = {
    "FORWARDER_OPERATOR_STATUS_INTERVAL": "0.3",
    "FORWARDER_OPERATOR_SWEEP_INTERVAL": "2",
}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ServedCluster]:
    with served_emulator(tmp_path / "kube") as served:
        yield served


def cluster_settings(redis_url: str, cluster: ServedCluster, **extra: Any) -> ApiSettings:
    """The api's settings in cluster mode against the emulator."""
    return ApiSettings(
        redis_url=redis_url,
        api_tokens=[TOKEN],
        task_modules=["support.sample_tasks"],
        schedules_mode="kubernetes",
        kubeconfig=cluster.kubeconfig,
        **extra,
    )


@pytest.fixture
def api(redis_url: str, cluster: ServedCluster) -> Iterator[TestClient]:
    settings = cluster_settings(redis_url, cluster)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def ready_reason(api: TestClient, name: str, namespace: str = "default") -> str | None:
    status = api.get(f"/schedules/{namespace}/{name}").json().get("status") or {}
    conditions = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return conditions[0]["reason"] if conditions else None


def test_crud_and_trigger_through_the_operator(
    redis_url: str, rclient: redis.Redis, cluster: ServedCluster, api: TestClient, logs: Path
) -> None:
    env = forwarder_env(redis_url, KUBECONFIG=str(cluster.kubeconfig), **FAST)
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
            json={"metadata": {"name": "report", "namespace": "mlops"}, "spec": spec},
        )
        assert created.status_code == 201, created.text
        assert created.json()["metadata"]["uid"]
        # It is a real resource: kubectl sees it.
        listed = json.loads(cluster.kubectl("get", "st", "-n", "mlops", "-o", "json").stdout)
        assert [i["metadata"]["name"] for i in listed["items"]] == ["report"]

        eventually(
            lambda: ready_reason(api, "report", "mlops") == "Scheduled", 60, 0.2, "Scheduled"
        )
        assert rclient.zscore("forwarder::schedule", "forwarder:mlops/report") is not None
        body = api.get("/schedules/mlops/report").json()
        assert body["spec"] == spec and body["status"]["nextRunTime"].endswith("T04:00:00Z")
        items = api.get("/schedules").json()["items"]
        assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items] == [
            ("mlops", "report")
        ]
        assert api.get("/schedules", params={"namespace": "other"}).json()["items"] == []

        duplicate = api.post(
            "/schedules",
            json={"metadata": {"name": "report", "namespace": "mlops"}, "spec": spec},
        )
        assert duplicate.status_code == 409

        bad = api.patch(
            "/schedules/mlops/report", json={"spec": {"schedule": {"cron": "61 * * * *"}}}
        )
        assert bad.status_code == 422
        assert (
            bad.json()["detail"]
            == "spec.schedule.cron: '61 * * * *' is not a valid cron expression"
        )

        patched = api.patch("/schedules/mlops/report", json={"spec": {"suspend": True}})
        assert patched.status_code == 200, patched.text
        assert patched.json()["spec"]["suspend"] is True
        eventually(
            lambda: ready_reason(api, "report", "mlops") == "Suspended", 60, 0.2, "Suspended"
        )
        assert rclient.zscore("forwarder::schedule", "forwarder:mlops/report") is None

        triggered = api.post("/schedules/mlops/report/trigger")
        assert triggered.status_code == 202, triggered.text
        value = triggered.json()["runNow"]
        assert value and triggered.json()["id"] is None
        annotations = api.get("/schedules/mlops/report").json()["metadata"]["annotations"]
        assert annotations["forwarder.dev/run-now"] == value

        def triggered_run() -> list[dict[str, Any]]:
            runs: list[dict[str, Any]] = api.get(
                "/runs", params={"schedule": "mlops/report", "state": "SUCCESS"}
            ).json()["items"]
            return runs

        (run,) = eventually(triggered_run, 60, 0.2, "the run-now run")
        assert run["source"] == "trigger" and run["result"]["kwargs"] == {"via": "api"}

        assert api.delete("/schedules/mlops/report").status_code == 204
        eventually(lambda: api.get("/schedules/mlops/report").status_code == 404, 60, 0.2, "gone")
        eventually(lambda: not rclient.exists("forwarder:mlops/report"), 60, 0.2, "entry removed")
        assert api.delete("/schedules/mlops/report").status_code == 404


def test_invalid_specs_never_reach_the_cluster(cluster: ServedCluster, api: TestClient) -> None:
    response = api.post(
        "/schedules",
        json={"metadata": {"name": "bad"}, "spec": {"task": "no.such", "schedule": {"every": 5}}},
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith("spec.task: 'no.such' is not a registered task")
    listed = json.loads(cluster.kubectl("get", "st", "-A", "-o", "json").stdout)
    assert listed["items"] == []
    assert api.get("/schedules/default/bad").status_code == 404
    assert api.post("/schedules/default/bad/trigger").status_code == 404


def test_unreachable_cluster_is_503(redis_url: str, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")
    settings = ApiSettings(
        redis_url=redis_url,
        api_tokens=[TOKEN],
        schedules_mode="kubernetes",
        kubeconfig=kubeconfig,
        kube_timeout=2,
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        response = client.get("/schedules")
        assert response.status_code == 503
        assert "the Kubernetes API is unreachable" in response.json()["detail"]
    missing = ApiSettings(
        redis_url=redis_url,
        api_tokens=[TOKEN],
        schedules_mode="kubernetes",
        kubeconfig=tmp_path / "nope",
    )
    with TestClient(create_app(missing), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        response = client.get("/schedules/default/x")
        assert response.status_code == 503
        assert response.json()["detail"].startswith("no Kubernetes configuration found")


def test_served_namespaces_only(redis_url: str, cluster: ServedCluster) -> None:
    """With FORWARDER_API_NAMESPACES (the chart's watchNamespaces, where the api has Roles
    in those namespaces only), /schedules lists each of them and answers 404 elsewhere."""
    settings = cluster_settings(redis_url, cluster, api_namespaces=["team-a", "team-b"])
    spec = {"task": "forwarder.ping", "schedule": {"every": "1h"}}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings), headers=headers) as api:
        for namespace in ("team-a", "team-b"):
            created = api.post(
                "/schedules",
                json={"metadata": {"name": "job", "namespace": namespace}, "spec": spec},
            )
            assert created.status_code == 201, created.text
        # team-c's resource exists in the cluster, but this api does not serve team-c.
        document = {"apiVersion": "forwarder.dev/v1alpha1", "kind": "ScheduledTask"}
        with httpx.Client(base_url=cluster.url) as kube:
            reply = kube.post(
                "/apis/forwarder.dev/v1alpha1/namespaces/team-c/scheduledtasks",
                json={**document, "metadata": {"name": "job"}, "spec": spec},
            )
            assert reply.status_code == 201, reply.text

        listed = api.get("/schedules")
        assert listed.status_code == 200, listed.text
        assert [
            (i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed.json()["items"]
        ] == [
            ("team-a", "job"),
            ("team-b", "job"),
        ]
        assert len(api.get("/schedules", params={"namespace": "team-b"}).json()["items"]) == 1
        for method, path, body in (
            ("GET", "/schedules?namespace=team-c", None),
            ("GET", "/schedules/team-c/job", None),
            ("DELETE", "/schedules/team-c/job", None),
            ("POST", "/schedules/team-c/job/trigger", None),
            (
                "POST",
                "/schedules",
                {"metadata": {"name": "new", "namespace": "team-c"}, "spec": spec},
            ),
        ):
            reply = api.request(method, path, json=body)
            assert reply.status_code == 404, (method, path, reply.text)
            assert "team-c" in reply.json()["detail"] and "not served" in reply.json()["detail"]
        names = json.loads(cluster.kubectl("get", "st", "-n", "team-c", "-o", "json").stdout)
        assert [i["metadata"]["name"] for i in names["items"]] == ["job"]
