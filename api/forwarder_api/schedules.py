"""Schedules as the API sees them, whichever source holds them.

Two backends implement :class:`ScheduleBackend`: ScheduledTask resources through the
Kubernetes API (:mod:`forwarder_api.kube_schedules`) and the YAML files of local mode
(:mod:`forwarder_api.local_schedules`). Neither writes schedule entries to Redis: the
operator or the folder source does, so there is one writer per source. Both validate a spec
with the core's :func:`forwarder_worker.schedules.reconcile.validate` before writing, so a bad
spec gets 422 with the same message the operator would put in its Ready condition.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from forwarder_worker.dispatch.backfill import Backfilled, Window
from forwarder_worker.dispatch.dispatcher import Overrides
from forwarder_worker.names import API_VERSION, KIND, NAME, NAMESPACE
from forwarder_worker.names import SUSPENDED_AFTER_FAILURES as SUSPENDED_AFTER
from forwarder_worker.schedules.model import InvalidSpec, ScheduledTaskSpec
from forwarder_worker.schedules.reconcile import validate

from forwarder_api.errors import Invalid


@dataclass(frozen=True)
class ScheduleView:
    """One schedule: its identity, declared spec and observed status."""

    namespace: str
    name: str
    spec: dict[str, Any]
    status: dict[str, Any] | None = None
    uid: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    file: str | None = None  # local mode: the file that declares it


@dataclass(frozen=True)
class Triggered:
    """A run-now request: the run id when the API fired it itself, or the annotation value
    it set for the operator to act on."""

    namespace: str
    name: str
    run_id: str | None = None
    run_now: str | None = None


@dataclass(frozen=True)
class Resumed:
    """A resume request: done by the API itself, or the annotation value it set for the
    operator to act on."""

    namespace: str
    name: str
    resumed: bool = False
    resume: str | None = None


@dataclass(frozen=True)
class BackfillAsked:
    """A backfill request: what the API did itself (local mode), or the annotation value it
    set for the operator to act on (cluster mode), with the window's slot count."""

    namespace: str
    name: str
    window: Window
    slots: int
    done: Backfilled | None = None
    backfill: str | None = None


NOT_PAUSED = "is not suspended after failures (only suspendAfterFailures' pause is resumed here)"


def is_paused(status: dict[str, Any] | None) -> bool:
    """Whether a status says the schedule is suspended after failures."""
    conditions = (status or {}).get("conditions") or []
    return any(
        isinstance(c, dict) and c.get("type") == "Ready" and c.get("reason") == SUSPENDED_AFTER
        for c in conditions
    )


class ScheduleBackend(Protocol):
    """What the ``/schedules`` routes need from a schedule source."""

    def list(self, namespace: str | None) -> list[ScheduleView]:
        """Every schedule, or those of one namespace."""
        ...

    def get(self, namespace: str, name: str) -> ScheduleView:
        """One schedule, or NotFound."""
        ...

    def create(
        self,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        labels: dict[str, str],
        annotations: dict[str, str],
    ) -> ScheduleView:
        """Declare a new schedule, or Conflict if it exists."""
        ...

    def patch(self, namespace: str, name: str, spec_patch: dict[str, Any]) -> ScheduleView:
        """Merge-patch a schedule's spec (RFC 7386), or NotFound."""
        ...

    def delete(self, namespace: str, name: str) -> None:
        """Remove a schedule, or NotFound."""
        ...

    def trigger(self, namespace: str, name: str, overrides: Overrides | None) -> Triggered:
        """Run a schedule's task once now, with ``overrides`` of its arguments if given."""
        ...

    def resume(self, namespace: str, name: str) -> Resumed:
        """Resume a schedule suspended after failures, or Conflict if it is not."""
        ...

    def backfill(self, namespace: str, name: str, window: Window) -> BackfillAsked:
        """Run each slot of a past ``window`` once, or 422 naming why the window is refused."""
        ...


def check_namespace(namespace: str) -> None:
    """422 unless the namespace is a DNS label."""
    if not NAMESPACE.match(namespace):
        raise Invalid(f"metadata.namespace: {namespace!r} is not a DNS-1123 label")


def check_identity(namespace: str, name: str) -> None:
    """422 unless the namespace is a DNS label and the name a DNS subdomain."""
    check_namespace(namespace)
    if not NAME.match(name):
        raise Invalid(f"metadata.name: {name!r} is not a DNS-1123 subdomain name")


def validate_spec(
    raw: Any, known_tasks: Collection[str] | None, *, allow_past_at: bool = False
) -> ScheduledTaskSpec:
    """The core's validation, as a 422 with the operator's message."""
    try:
        return validate(raw, known_tasks, allow_past_at=allow_past_at)
    except InvalidSpec as exc:
        raise Invalid(str(exc)) from None


def new_document(
    namespace: str,
    name: str,
    spec: dict[str, Any],
    labels: dict[str, str],
    annotations: dict[str, str],
    known_tasks: Collection[str] | None,
) -> dict[str, Any]:
    """A checked ScheduledTask document to create, or 422 naming what is wrong."""
    check_identity(namespace, name)
    validate_spec(spec, known_tasks)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: ``null`` removes a key, mappings merge, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


KnownTasks = Callable[[], Collection[str]]
