"""The few Kubernetes API calls the operator makes outside kopf's handlers.

kopf delivers events to handlers, but the status loop and the sweep work across all
resources at once: they list ScheduledTasks and patch status through this client; the
retries read one object afresh and write its finalizer and Events. Objects read here are
validated into :class:`~forwarder_operator.resource.ScheduledTask` as they arrive.

The client is lightkube's, not the ``kubernetes`` package's: that package imports every
generated model of the whole Kubernetes API when imported (about 20 MiB of the operator's
RSS, with requests and oauthlib; lightkube and httpx2 cost about 6), and kopf imports it
too whenever it is installed, so it is not a dependency at all. Credentials are
lightkube's: in-cluster, else ``KUBECONFIG`` (else ``~/.kube/config``), the order of the
operator's kopf login (:func:`forwarder_operator.handlers.login`).

A refused request raises :class:`httpx2.HTTPStatusError` (lightkube's ``ApiError`` when the
API server answered with a Status), an unreachable server :class:`httpx2.TransportError`.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess  # nosec B404  # runs the kubeconfig's exec plugin, never a shell
from collections.abc import Collection, Iterable
from typing import Any

import httpx2
from forwarder_worker.names import API_VERSION, FINALIZER, GROUP, KIND, PLURAL, VERSION
from lightkube import Client, ConfigError, KubeConfig
from lightkube.generic_resource import (
    GenericNamespacedResource,
    create_global_resource,
    create_namespaced_resource,
)
from lightkube.types import PatchType

from forwarder_operator.resource import ObjectMeta, ScheduledTask

COMPONENT = "forwarder-operator"
"""The Events' reporting component, and the field manager of the operator's writes."""

LIST_CHUNK = 500
"""Objects per page when listing ScheduledTasks (kopf's initial listing too): kubectl's
default ``--chunk-size``. At 10,000 resources one unpaged list is a ~25 MB response, held
whole (and decoded whole) by the API server and by the operator at once."""

ScheduledTaskResource = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
CoreEvent = create_namespaced_resource("", "v1", "Event", "events")
PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"
KopfPeering = create_namespaced_resource(
    PEERING_GROUP, PEERING_VERSION, "KopfPeering", "kopfpeerings"
)
ClusterKopfPeering = create_global_resource(
    PEERING_GROUP, PEERING_VERSION, "ClusterKopfPeering", "clusterkopfpeerings"
)


def finalizers_with(finalizers: Iterable[str], *, present: bool) -> list[str]:
    """``finalizers`` with ours added (last) or removed; everyone else's kept in order."""
    kept = [f for f in finalizers if f != FINALIZER]
    return [*kept, FINALIZER] if present else kept


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of a refused request, None for any other error."""
    return exc.response.status_code if isinstance(exc, httpx2.HTTPStatusError) else None


class ExecPluginError(Exception):
    """The kubeconfig user's exec plugin failed or printed no credential."""


def exec_credential() -> dict[str, Any] | None:
    """What the current kubeconfig user's exec plugin (EKS's, GKE's and the like) prints, as
    kopf's :class:`kopf.ConnectionInfo` fields (``token`` or a client certificate, and
    ``expiration``); None when that user has no exec plugin. kopf's own kubeconfig login
    runs no plugin (the kubernetes package did that for it); lightkube runs it for this
    module's client (``v1alpha1`` and ``v1beta1`` plugins only, what EKS and GKE write).
    Raises :class:`ExecPluginError`, naming the command."""
    try:
        config = KubeConfig.from_env().get()
    except (ConfigError, OSError):
        return None
    user = config.user if config is not None else None
    plugin = user.exec if user is not None else None
    if plugin is None:
        return None
    command = [plugin.command, *(plugin.args or [])]
    env = {**os.environ, **{var.name: var.value for var in plugin.env or []}}
    # What kubectl tells a plugin: not interactive (no prompt can reach a human here).
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {"apiVersion": plugin.apiVersion, "kind": "ExecCredential", "spec": {"interactive": False}}
    )
    try:
        done = subprocess.run(  # nosec B603  # the kubeconfig's own command, as kubectl runs it
            command, env=env, capture_output=True, text=True, timeout=60, check=True
        )
        return _credential_fields(json.loads(done.stdout)["status"])
    except subprocess.CalledProcessError as exc:
        raise ExecPluginError(
            f"the kubeconfig's exec plugin {plugin.command} failed ({exc.returncode}): "
            f"{exc.stderr.strip()[-500:]}"
        ) from None
    except (OSError, subprocess.TimeoutExpired, ValueError, LookupError, TypeError) as exc:
        raise ExecPluginError(f"the kubeconfig's exec plugin {plugin.command}: {exc}") from None


def _credential_fields(status: Any) -> dict[str, Any]:
    """An ExecCredential's ``status`` as ConnectionInfo fields; ValueError if it holds none."""
    if not isinstance(status, dict):
        raise TypeError(f"its status is {type(status).__name__}, not an object")
    fields: dict[str, Any] = {}
    if status.get("token"):
        fields["token"] = str(status["token"])
    elif status.get("clientCertificateData") and status.get("clientKeyData"):
        fields["certificate_data"] = str(status["clientCertificateData"])
        fields["private_key_data"] = str(status["clientKeyData"])
    else:
        raise ValueError("it gave no credential (no token, no client certificate and key)")
    expires = status.get("expirationTimestamp")
    if expires:
        fields["expiration"] = datetime.datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
    return fields


def _task(obj: GenericNamespacedResource) -> ScheduledTask:
    # A generic resource is the object's JSON as a dict: there is no model for custom resources.
    return ScheduledTask.model_validate(dict(obj))


class KubeClient:
    """Lists ScheduledTasks and patches their status (synchronous; call it from a thread)."""

    def __init__(self, namespaces: Collection[str] = ()) -> None:
        self.namespaces = sorted(namespaces)
        self._client: Client | None = None

    @property
    def api(self) -> Client:
        # Built on first use, so importing or starting the operator needs no credentials yet.
        if self._client is None:
            # Proxy variables ignored, as kopf ignores them (settings.networking.trust_env).
            self._client = Client(KubeConfig.from_env(), field_manager=COMPONENT, trust_env=False)
        return self._client

    def list_scheduled_tasks(self) -> list[ScheduledTask]:
        """Every ScheduledTask in the watched namespaces (all namespaces when none are set)."""
        if not self.namespaces:
            listed = self.api.list(ScheduledTaskResource, namespace="*", chunk_size=LIST_CHUNK)
            return [_task(obj) for obj in listed]
        return [
            _task(obj)
            for namespace in self.namespaces
            for obj in self.api.list(
                ScheduledTaskResource, namespace=namespace, chunk_size=LIST_CHUNK
            )
        ]

    def get_scheduled_task(self, namespace: str, name: str) -> ScheduledTask | None:
        """One ScheduledTask, or None if it does not exist."""
        try:
            obj = self.api.get(ScheduledTaskResource, name, namespace=namespace)
        except httpx2.HTTPStatusError as exc:
            if status_code(exc) == 404:
                return None
            raise
        return _task(obj)

    def peering_missing(self, name: str, namespace: str | None) -> bool:
        """Whether the API server says kopf's peering object ``name`` does not exist (404; a
        ClusterKopfPeering when ``namespace`` is None). Any other refusal, or no answer, says
        nothing of it: False, and kopf meets the same when it starts, and reports it."""
        try:
            if namespace is None:
                self.api.get(ClusterKopfPeering, name)
            else:
                self.api.get(KopfPeering, name, namespace=namespace)
        except httpx2.HTTPStatusError as exc:
            return status_code(exc) == 404
        except httpx2.TransportError:
            return False
        return False

    def set_finalizer(self, meta: ObjectMeta, *, present: bool) -> None:
        """Add or remove our finalizer, only if the object is still the version ``meta``
        shows (a JSON-patch test): others' finalizers are never overwritten. A conflict
        raises HTTPStatusError (422); the caller reads the object again."""
        finalizers = finalizers_with(meta.finalizers, present=present)
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta.resource_version},
            {"op": "add", "path": "/metadata/finalizers", "value": finalizers},
        ]
        try:
            self.api.patch(
                ScheduledTaskResource,
                meta.name,
                ops,
                namespace=meta.namespace,
                patch_type=PatchType.JSON,
            )
        except httpx2.HTTPStatusError as exc:
            if status_code(exc) != 404:  # gone: nothing left to hold
                raise

    def post_event(self, meta: ObjectMeta, type: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about the object ``meta`` names (what kopf posts from handlers)."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.name}.", "namespace": meta.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta.name,
                "namespace": meta.namespace,
                "uid": meta.uid,
                "resourceVersion": meta.resource_version,
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        # A generic resource, as the JSON above: lightkube's Event model would import the
        # whole core/v1 group's models for one write.
        self.api.create(CoreEvent.from_dict(event), namespace=meta.namespace)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> ObjectMeta | None:
        """Merge ``status`` into the resource's status; returns the metadata of the version
        this write made, or None if the resource is gone."""
        try:
            reply = self.api.patch(
                ScheduledTaskResource.Status,
                name,
                {"status": status},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        except httpx2.HTTPStatusError as exc:
            if status_code(exc) == 404:
                return None
            raise
        return ObjectMeta.model_validate(reply["metadata"])

    def close(self) -> None:
        """Close the HTTP pool."""
        if self._client is not None:
            self._client.close()
            self._client = None
