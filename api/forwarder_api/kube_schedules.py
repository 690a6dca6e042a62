"""Cluster mode's schedules: ScheduledTask resources read and written through the Kubernetes API.

The API never touches schedule entries in Redis here. It writes resources; the operator
reconciles them into entries and status, and acts on the run-now annotation, so the
operator stays the only writer. Specs are validated before they are sent, because no CRD
schema can tell an unknown task, a past ``at`` or an unknown zone, older clusters do not run
its CEL rules, and a 422 from the API is clearer than a Ready=False found later.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx2
from forwarder_worker.dispatch.backfill import Backfiller, BackfillRefused, Window
from forwarder_worker.dispatch.dispatcher import Overrides, overrides_annotation
from forwarder_worker.names import (
    BACKFILL_ANNOTATION,
    GROUP,
    KIND,
    PLURAL,
    RESUME_ANNOTATION,
    RUN_NOW_ANNOTATION,
    RUN_NOW_OVERRIDES_ANNOTATION,
    VERSION,
)
from lightkube import ApiError, Client, ConfigError, KubeConfig
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

from forwarder_api.errors import (
    BadGateway,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unavailable,
)
from forwarder_api.schedules import (
    NOT_PAUSED,
    BackfillAsked,
    KnownTasks,
    Resumed,
    ScheduleView,
    Triggered,
    check_identity,
    check_namespace,
    is_paused,
    merge_patch,
    new_document,
    validate_spec,
)
from forwarder_api.settings import ApiSettings

FIELD_MANAGER = "forwarder-api"
"""Who the API server records as the writer of what the api changes (managedFields)."""

ScheduledTaskResource = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)


def _message(exc: httpx2.HTTPStatusError) -> str:
    """The API server's own words (its Status message), else the HTTP reason."""
    if isinstance(exc, ApiError) and exc.status.message:
        return str(exc.status.message)
    return exc.response.reason_phrase or str(exc.response.status_code)


def _new_value() -> str:
    """A fresh value for an act-once annotation (run-now, resume): when, and unique."""
    return f"{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}-{uuid.uuid4().hex[:8]}"


class KubeSchedules:
    """The ScheduleBackend of cluster mode."""

    def __init__(
        self, settings: ApiSettings, known_tasks: KnownTasks, backfiller: Backfiller
    ) -> None:
        self.settings = settings
        self.known_tasks = known_tasks
        # Read only: checks a backfill's window against the entry before the annotation is
        # set; the operator runs it.
        self.backfiller = backfiller
        self.timeout = settings.kube_timeout
        self._api: Client | None = None
        self._lock = threading.Lock()

    def api(self) -> Client:
        """The Kubernetes client, configured on first use (503 if no config is found)."""
        with self._lock:
            if self._api is None:
                try:
                    if self.settings.kubeconfig is not None:
                        config = KubeConfig.from_file(self.settings.kubeconfig)
                    else:  # in-cluster, else KUBECONFIG, else ~/.kube/config
                        config = KubeConfig.from_env()
                    # Proxy variables ignored, as the operator's kopf ignores them.
                    self._api = Client(
                        config,
                        timeout=httpx2.Timeout(self.timeout),
                        field_manager=FIELD_MANAGER,
                        trust_env=False,
                    )
                except (ConfigError, OSError, ValueError) as exc:
                    raise Unavailable(f"no Kubernetes configuration found: {exc}") from None
            return self._api

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the Kubernetes API, turning its failures into the API's errors."""
        try:
            return fn(*args, **kwargs)
        except httpx2.HTTPStatusError as exc:
            status = exc.response.status_code
            message = f"{what}: {_message(exc)}"
            if status == 404:
                raise NotFound(message) from None
            if status == 409:
                raise Conflict(message) from None
            if status in (400, 422):
                raise Invalid(message) from None
            if status == 403:
                # Not granted to the api's ServiceAccount (a namespace outside its Roles): the
                # request cannot be served here, and the apiserver's reason says why.
                raise Forbidden(f"{message} (refused by the api's RBAC)") from None
            if status == 401:
                raise BadGateway(f"{message} (the api's Kubernetes credentials)") from None
            raise BadGateway(f"{message} (Kubernetes API answered {status})") from None
        except (httpx2.HTTPError, OSError) as exc:
            raise Unavailable(f"{what}: the Kubernetes API is unreachable: {exc}") from None
        except KeyError as exc:
            # lightkube reads a refusal's Content-Type header unguarded (to tell a Status
            # from other bodies): an answer without one, a proxy's, raises KeyError there.
            raise BadGateway(
                f"{what}: the Kubernetes API answered an error without a Content-Type ({exc})"
            ) from None

    @staticmethod
    def _view(obj: dict[str, Any]) -> ScheduleView:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec")
        return ScheduleView(
            namespace=str(meta.get("namespace") or "default"),
            name=str(meta.get("name") or ""),
            spec=spec if isinstance(spec, dict) else {},
            status=obj.get("status"),
            uid=meta.get("uid"),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
        )

    def _check(self, namespace: str, name: str | None = None) -> None:
        """422 for a malformed namespace or name, 403 for a namespace this api does not serve
        (its RBAC would refuse it too, with a message that names no setting)."""
        if name is None:
            check_namespace(namespace)
        else:
            check_identity(namespace, name)
        served = self.settings.api_namespaces
        if served and namespace not in served:
            raise Forbidden(
                f"namespace {namespace!r} is not served here "
                f"(FORWARDER_API_NAMESPACES: {', '.join(served)})"
            )

    def _get(self, namespace: str, name: str) -> dict[str, Any]:
        self._check(namespace, name)
        obj: dict[str, Any] = self._call(
            f"ScheduledTask {namespace}/{name}",
            self.api().get,
            ScheduledTaskResource,
            name,
            namespace=namespace,
        )
        return obj

    # -- ScheduleBackend ----------------------------------------------------------------------

    def list(self, namespace: str | None) -> list[ScheduleView]:
        if namespace is None and not self.settings.api_namespaces:
            # list() pages lazily: the pages are read inside _call, so its errors are mapped.
            items = self._call(
                "listing ScheduledTasks",
                lambda: list(self.api().list(ScheduledTaskResource, namespace="*")),
            )
        else:
            items = []
            for each in [namespace] if namespace is not None else self.settings.api_namespaces:
                self._check(each)
                items.extend(
                    self._call(
                        f"listing ScheduledTasks in {each}",
                        lambda ns=each: list(self.api().list(ScheduledTaskResource, namespace=ns)),
                    )
                )
        views = [self._view(item) for item in items]
        return sorted(views, key=lambda v: (v.namespace, v.name))

    def get(self, namespace: str, name: str) -> ScheduleView:
        return self._view(self._get(namespace, name))

    def create(
        self,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        labels: dict[str, str],
        annotations: dict[str, str],
    ) -> ScheduleView:
        self._check(namespace, name)
        body = new_document(namespace, name, spec, labels, annotations, self.known_tasks())
        created = self._call(
            f"creating ScheduledTask {namespace}/{name}",
            self.api().create,
            ScheduledTaskResource.from_dict(body),
            namespace=namespace,
        )
        return self._view(created)

    def patch(self, namespace: str, name: str, spec_patch: dict[str, Any]) -> ScheduleView:
        current = self._get(namespace, name)
        merged = merge_patch(current.get("spec"), spec_patch)
        validate_spec(merged, self.known_tasks(), allow_past_at=True)
        # The resourceVersion makes the patch fail with 409 if someone changed it meanwhile.
        body = {
            "metadata": {"resourceVersion": current["metadata"].get("resourceVersion")},
            "spec": spec_patch,
        }
        patched = self._call(
            f"patching ScheduledTask {namespace}/{name}",
            self.api().patch,
            ScheduledTaskResource,
            name,
            body,
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
        return self._view(patched)

    def delete(self, namespace: str, name: str) -> None:
        self._check(namespace, name)
        self._call(
            f"ScheduledTask {namespace}/{name}",
            self.api().delete,
            ScheduledTaskResource,
            name,
            namespace=namespace,
        )

    def _annotate(self, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        """Set (None: remove) annotations the operator acts on, in one merge patch."""
        self._call(
            f"ScheduledTask {namespace}/{name}",
            self.api().patch,
            ScheduledTaskResource,
            name,
            {"metadata": {"annotations": annotations}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )

    def trigger(self, namespace: str, name: str, overrides: Overrides | None) -> Triggered:
        self._check(namespace, name)
        value = _new_value()
        # The overrides ride in their own annotation, tied to this value, in the same patch:
        # the operator runs this value with them, and a later plain run-now without them.
        annotations = {
            RUN_NOW_ANNOTATION: value,
            RUN_NOW_OVERRIDES_ANNOTATION: None
            if overrides is None
            else overrides_annotation(value, overrides),
        }
        self._annotate(namespace, name, annotations)
        return Triggered(namespace, name, run_now=value)

    def resume(self, namespace: str, name: str) -> Resumed:
        current = self._get(namespace, name)
        if not is_paused(current.get("status")):
            raise Conflict(f"ScheduledTask {namespace}/{name} {NOT_PAUSED}")
        value = _new_value()
        self._annotate(namespace, name, {RESUME_ANNOTATION: value})
        return Resumed(namespace, name, resume=value)

    def backfill(self, namespace: str, name: str, window: Window) -> BackfillAsked:
        self._get(namespace, name)
        # Checked here too (the operator checks again), so a refused window is a 422 now,
        # not only an Event later.
        try:
            slots = self.backfiller.slots(f"{namespace}/{name}", window)
        except BackfillRefused as exc:
            raise Invalid(str(exc)) from None
        except LookupError:
            raise Conflict(
                f"ScheduledTask {namespace}/{name} has no schedule entry yet (is it Ready?)"
            ) from None
        value = str(window)
        self._annotate(namespace, name, {BACKFILL_ANNOTATION: value})
        return BackfillAsked(namespace, name, window, len(slots), backfill=value)
