"""The few Kubernetes API calls the operator makes outside kopf's handlers.

kopf delivers events to handlers, but the status loop and the sweep work across all
resources at once: they list ScheduledTasks and patch status through this client. It uses
the same credentials kopf's default login uses (in-cluster, else ``KUBECONFIG``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

GROUP = "forwarder.dev"
VERSION = "v1alpha1"
PLURAL = "scheduledtasks"


def _api_client() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient()


def _items(reply: object) -> list[dict[str, Any]]:
    # Custom objects come back as plain dicts: there is no generated model for them.
    assert isinstance(reply, dict)
    return list(reply.get("items", []))


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

    def list_scheduled_tasks(self) -> list[dict[str, Any]]:
        """Every ScheduledTask in the watched namespaces (all namespaces when none are set)."""
        if not self.namespaces:
            reply = self.api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            return _items(reply)
        items: list[dict[str, Any]] = []
        for namespace in self.namespaces:
            reply = self.api.list_namespaced_custom_object(  # a dict: no model for CRs
                GROUP, VERSION, namespace, PLURAL
            )
            items.extend(_items(reply))
        return items

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge ``status`` into the resource's status; False if the resource is gone."""
        try:
            self.api.patch_namespaced_custom_object_status(
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
                return False
            raise
        return True

    def close(self) -> None:
        """Close the HTTP pool."""
        if self._client is not None:
            self._client.close()  # type: ignore[no-untyped-call]
            self._client = None
