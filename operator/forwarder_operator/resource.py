"""The ScheduledTask object as the operator reads it: a pydantic model, validated once where a
body comes in (the kopf handler's event, the :class:`~forwarder_operator.kube.KubeClient`'s
get and list), and passed on instead of the raw mapping.

The model is narrow: it keeps the metadata, status and spec fields the operator uses and
ignores the rest (managedFields, labels, the run history in status). Its types are those the
CRD's schema and the API server guarantee, so validation fails only on an object the API server
would not serve. The spec stays raw here: :func:`forwarder_worker.schedules.model.parse_spec`
validates it, because an invalid spec must become ``Ready=False`` with a reason and an Event,
never an exception.

Why ``model_validate`` on every watch event, and not ``model_construct``: the handler runs for
every watch event (three per new resource, then one per status write; 10,000 resources in the
operator-scale bench). Measured with timeit, interleaved rounds, best of 40, on a reconciled
object as an API server sends it (managedFields of three managers, kubectl's last-applied
annotation, ten recent runs in status): validating the raw dict takes 2.6-2.9 µs, and the
handler's decisions on an in-step event (``needs_redis`` and ``plan``) 4.9-5.3 µs with the
validation, where the same decisions by dict access on kopf's ``Body`` took 4.5-4.7 µs.
Building the same model with ``model_construct`` from dict lookups took 9.0 µs (pydantic-core's
validation is compiled; the lookups are Python), and validating kopf's ``Body`` instead of the
raw dict under it 4.8-5.1 µs, so the handler validates the event's raw object. The half
microsecond more per event is about 0.03% of the 4.4 ms of operator CPU a resource costs at
10,000 (bench/REPORT.md, operator scale); a new object, with no status yet, is decided faster
than before (1.9 against 2.1-2.3 µs).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Read(BaseModel):
    """What the operator reads of an object: fields it does not use are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Condition(_Read):
    """One of ``status.conditions`` (the operator reads only Ready)."""

    type: str
    status: str
    reason: str | None = None
    last_transition_time: str | None = Field(default=None, alias="lastTransitionTime")


class TaskStatus(_Read):
    """The status fields the operator decides from."""

    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    conditions: tuple[Condition, ...] = ()


class ObjectMeta(_Read):
    """The metadata the operator uses: identity, version, finalizers, annotations, deletion."""

    namespace: str
    name: str
    uid: str = ""
    generation: int | None = None
    resource_version: str = Field(default="", alias="resourceVersion")
    finalizers: tuple[str, ...] = ()
    annotations: dict[str, str] = Field(default_factory=dict)
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")

    @property
    def entry_name(self) -> str:
        """The object's schedule entry: ``<namespace>/<name>``."""
        return f"{self.namespace}/{self.name}"


class ScheduledTask(_Read):
    """A ScheduledTask as a watch event, a get or a list shows it."""

    metadata: ObjectMeta
    spec: Any = Field(default_factory=dict)
    """Raw: validated by the core when it is applied (an invalid spec is reported, not raised)."""
    status: TaskStatus | None = None
    """None until something writes status: the object is new."""

    @field_validator("status", mode="before")
    @classmethod
    def _empty_status_is_none(cls, value: Any) -> Any:
        return value or None

    def previous_status(self) -> dict[str, Any]:
        """The status as :mod:`forwarder_worker.schedules.status` reads it before a write (the Ready
        condition's ``lastTransitionTime`` moves only when its status flips)."""
        if self.status is None:
            return {}
        return {
            "conditions": [
                c.model_dump(by_alias=True, exclude_none=True) for c in self.status.conditions
            ]
        }
