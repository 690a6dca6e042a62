"""The few Kubernetes API calls the operator makes outside kopf's handlers.

kopf delivers events to handlers, but the status loop and the sweep work across all
resources at once: they list ScheduledTasks and patch status through this client; the
retries read one object afresh and write its finalizer and Events. Objects read here are
validated into :class:`~forwarder_operator.resource.ScheduledTask` as they arrive. It uses
the same credentials kopf's default login uses (in-cluster, else ``KUBECONFIG``).
"""

from __future__ import annotations

import datetime
from collections.abc import Collection, Iterable
from typing import Any

import kubernetes
from forwarder_worker.names import API_VERSION, FINALIZER, GROUP, KIND, PLURAL, VERSION
from kubernetes.client.exceptions import ApiException

from forwarder_operator.resource import ObjectMeta, ScheduledTask

COMPONENT = "forwarder-operator"
"""The Events' reporting component."""


def finalizers_with(finalizers: Iterable[str], *, present: bool) -> list[str]:
    """``finalizers`` with ours added (last) or removed; everyone else's kept in order."""
    kept = [f for f in finalizers if f != FINALIZER]
    return [*kept, FINALIZER] if present else kept


def _api_client() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient()


def _items(reply: object) -> list[ScheduledTask]:
    # Custom objects come back as plain dicts: there is no generated model for them.
    if not isinstance(reply, dict):
        raise TypeError(
            f"a list of ScheduledTasks came back as {type(reply).__name__}, not an object"
        )
    return [ScheduledTask.model_validate(item) for item in reply.get("items", [])]


class KubeClient:
    """Lists ScheduledTasks and patches their status (synchronous; call it from a thread)."""

    def __init__(self, namespaces: Collection[str] = ()) -> None:
        self.namespaces = sorted(namespaces)
        self._client: kubernetes.client.ApiClient | None = None

    @property
    def api(self) -> kubernetes.client.CustomObjectsApi:
        # Built on first use, so importing or starting the operator needs no credentials yet.
        if self._client is None:
            self._client = _api_client()
        return kubernetes.client.CustomObjectsApi(self._client)

    def list_scheduled_tasks(self) -> list[ScheduledTask]:
        """Every ScheduledTask in the watched namespaces (all namespaces when none are set)."""
        if not self.namespaces:
            reply = self.api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            return _items(reply)
        items: list[ScheduledTask] = []
        for namespace in self.namespaces:
            reply = self.api.list_namespaced_custom_object(  # a dict: no model for CRs
                GROUP, VERSION, namespace, PLURAL
            )
            items.extend(_items(reply))
        return items

    def get_scheduled_task(self, namespace: str, name: str) -> ScheduledTask | None:
        """One ScheduledTask, or None if it does not exist."""
        try:
            reply = self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return ScheduledTask.model_validate(reply)

    def set_finalizer(self, meta: ObjectMeta, *, present: bool) -> None:
        """Add or remove our finalizer, only if the object is still the version ``meta``
        shows (a JSON-patch test): others' finalizers are never overwritten. A conflict
        raises ApiException (422); the caller reads the object again."""
        finalizers = finalizers_with(meta.finalizers, present=present)
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta.resource_version},
            {"op": "add", "path": "/metadata/finalizers", "value": finalizers},
        ]
        try:
            self.api.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                meta.namespace,
                PLURAL,
                meta.name,
                ops,
                _content_type="application/json-patch+json",
            )
        except ApiException as exc:
            if exc.status != 404:  # gone: nothing left to hold
                raise

    def post_event(self, meta: ObjectMeta, type: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about the object ``meta`` names (what kopf posts from handlers)."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "metadata": {"generateName": f"{meta.name}."},
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
        # A dict body: the client serialises it as is (its model class adds nothing here).
        kubernetes.client.CoreV1Api(self.api.api_client).create_namespaced_event(
            meta.namespace,
            event,  # type: ignore[arg-type]
        )

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> ObjectMeta | None:
        """Merge ``status`` into the resource's status; returns the metadata of the version
        this write made, or None if the resource is gone."""
        try:
            reply = self.api.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": status},
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        if not isinstance(reply, dict):
            raise TypeError(
                f"the status patch of {namespace}/{name} came back as {type(reply).__name__}"
            )
        return ObjectMeta.model_validate(reply["metadata"])

    def close(self) -> None:
        """Close the HTTP pool."""
        if self._client is not None:
            self._client.close()  # type: ignore[no-untyped-call]
            self._client = None
