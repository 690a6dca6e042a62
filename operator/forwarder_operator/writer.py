"""The one place the operator writes to a ScheduledTask: a :class:`Plan` (status, finalizer,
Events, log lines) turned into writes.

Four paths decide writes: the kopf handler (each watch event), the status pass (changed run
records), the sweep (a repaired entry) and the retry (an object whose reconcile waited for
Redis). All of them hand a Plan to a :class:`Writer`, which writes it in one order (status
first: an object gone by then gets nothing more) and logs it one way, so a retried object
gets the same status, finalizer, Events and log lines its handler would have written.

The two writers differ only in how a write reaches the API server:

* :class:`KopfWriter`, in the handler: the status goes into kopf's patch and the finalizer
  into a patch function, and kopf sends both once the handler returns: one status PATCH and
  one finalizer JSON-patch per new resource, the least :mod:`forwarder_operator.reconciler`
  measured (the status PATCH alone where the finalizer came with the create). Events go to
  kopf's poster. Nothing here blocks, so the watch events that need no Redis are still
  decided on the event loop.
* :class:`ApiWriter`, in the background loop's threads: each write is a request of the
  :class:`~forwarder_operator.kube.KubeClient`, sent at once.
"""

from __future__ import annotations

import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx2
import kopf
from forwarder_worker.names import FINALIZER

from forwarder_operator.kube import KubeClient, finalizers_with, status_code
from forwarder_operator.resource import ObjectMeta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the object."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    """What to write for one object; empty when it is in step."""

    status: dict[str, Any] = field(default_factory=dict)
    """Merged into the object's status (a None value removes the field)."""
    add_finalizer: bool = False
    remove_finalizer: bool = False
    events: list[Event] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    """Info lines about the object (Warning Events are logged as warnings too)."""


class Writer(ABC):
    """Writes plans for one object."""

    logger: kopf.Logger

    def write(self, plan: Plan) -> bool:
        """Write ``plan``; False if the status write found the object gone, and then nothing
        else is written."""
        if plan.status and not self.patch_status(plan.status):
            return False
        if plan.add_finalizer or plan.remove_finalizer:
            self.set_finalizer(present=plan.add_finalizer)
        for event in plan.events:
            self.post_event(event)
            if event.type == "Warning":
                self.logger.warning("%s: %s", event.reason, event.message)
        for line in plan.log:
            self.logger.info("%s", line)
        return True

    @abstractmethod
    def patch_status(self, status: dict[str, Any]) -> bool:
        """Merge ``status`` into the object's status; False if the object is gone."""

    @abstractmethod
    def set_finalizer(self, *, present: bool) -> None:
        """Put our finalizer on (``present``) or take it off, keeping everyone else's."""

    @abstractmethod
    def post_event(self, event: Event) -> None:
        """Post ``event`` about the object."""


class KopfWriter(Writer):
    """The handler's writes, into kopf's patch: kopf sends them after the handler returns."""

    def __init__(self, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
        self.body = body
        self.patch = patch
        self.logger = logger

    def patch_status(self, status: dict[str, Any]) -> bool:
        self.patch.status.update(status)
        return True  # kopf sends it later, and ignores an object gone by then

    def set_finalizer(self, *, present: bool) -> None:
        # A JSON-patch function: kopf sends it with a resourceVersion test, so a concurrent
        # change to the list by another controller is never overwritten.
        self.patch.fns.append(functools.partial(mark_finalizer, present=present))

    def post_event(self, event: Event) -> None:
        kopf.event(self.body, type=event.type, reason=event.reason, message=event.message)


class ApiWriter(Writer):
    """The background loop's writes, each a request sent at once (blocking: run it in a
    thread)."""

    def __init__(self, kube: KubeClient, meta: ObjectMeta) -> None:
        self.kube = kube
        self.meta = meta
        self.logger = _ObjectLog(log, meta.entry_name)

    def patch_status(self, status: dict[str, Any]) -> bool:
        written = self.kube.patch_status(self.meta.namespace, self.meta.name, status)
        if written is None:
            return False
        # The status write made a new version: the finalizer's JSON-patch tests that one, as
        # kopf's does after its status PATCH (the version read before would always conflict).
        self.meta = written
        return True

    def set_finalizer(self, *, present: bool) -> None:
        try:
            self.kube.set_finalizer(self.meta, present=present)
        except httpx2.HTTPStatusError as exc:
            if status_code(exc) != 422:
                raise
            # The object changed since it was read: a retry's writes bring watch events, and
            # the handler (no longer held off) may add or remove the finalizer meanwhile. Read
            # it again, and patch only if the finalizer is still not as planned.
            fresh = self.kube.get_scheduled_task(self.meta.namespace, self.meta.name)
            if fresh is None or (FINALIZER in fresh.metadata.finalizers) == present:
                return
            self.meta = fresh.metadata
            self.kube.set_finalizer(self.meta, present=present)

    def post_event(self, event: Event) -> None:
        self.kube.post_event(self.meta, event.type, event.reason, event.message)


class _ObjectLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes each line with ``[<namespace>/<name>]``, as kopf prefixes its handlers'."""

    def __init__(self, logger: logging.Logger, entry_name: str) -> None:
        super().__init__(logger)
        self.prefix = f"[{entry_name}] "

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return f"{self.prefix}{msg}", kwargs


def mark_finalizer(body: kopf.RawBody, *, present: bool) -> None:
    """kopf patch function: our finalizer on (``present``) or off, others kept."""
    metadata = body.setdefault("metadata", {})
    metadata["finalizers"] = finalizers_with(metadata.get("finalizers") or (), present=present)
