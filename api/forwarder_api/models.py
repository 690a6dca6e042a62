"""Request and response bodies of the API, as pydantic models (they make the OpenAPI schema)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from forwarder_worker.dispatch.backfill import Window, parse_instant
from forwarder_worker.names import API_VERSION, KIND, NAME_PATTERN, NAMESPACE_PATTERN
from forwarder_worker.runs.records import STATES
from forwarder_worker.values import ENVELOPE_DEPTH, MAX_DEPTH, check_json_value
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from starlette.responses import Response

RunState = Literal[STATES]  # type: ignore[valid-type]
QUEUE_PATTERN = r"^[A-Za-z0-9_.:-]+$"
MAX_DELAY_SECONDS = 30 * 24 * 3600


class _Body(BaseModel):
    # Unknown fields are mistakes; NaN and Infinity are not times.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _bounded_body(cls, data: Any) -> Any:
        # Every string, number and level of a body, labels and ignored fields included, is
        # one the api can store and answer with; args and kwargs get their own exact depth.
        check_json_value(data, max_depth=MAX_DEPTH + ENVELOPE_DEPTH)
        return data


def _bounded(value: Any) -> Any:
    """A run's args or kwargs within what the broker, the worker and the record carry."""
    check_json_value(value)
    return value


Args = Annotated[list[Any], AfterValidator(_bounded)]
Kwargs = Annotated[dict[str, Any], AfterValidator(_bounded)]


class RunRequest(_Body):
    """What to run: arguments and Celery options (all optional)."""

    args: Args = Field(default_factory=list, description="Positional arguments")
    kwargs: Kwargs = Field(default_factory=dict, description="Keyword arguments")
    queue: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=QUEUE_PATTERN, description="Queue"
    )
    countdown: float | None = Field(
        default=None, ge=0, le=MAX_DELAY_SECONDS, description="Seconds to wait before running"
    )
    eta: AwareDatetime | None = Field(
        default=None, description="When to run (RFC 3339 with a zone); excludes countdown"
    )
    expires: Annotated[float, Field(gt=0, le=MAX_DELAY_SECONDS)] | AwareDatetime | None = Field(
        default=None, description="Seconds from now, or an instant, after which it is not run"
    )
    priority: int | None = Field(default=None, ge=0, le=9, description="0 (lowest) to 9")

    @field_validator("expires", mode="before")
    @classmethod
    def _seconds_or_instant(cls, value: Any) -> Any:
        # A number is seconds from now; pydantic would read one out of range as an epoch
        # timestamp instead (-5: 1969, expired before it is sent).
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and not 0 < value <= MAX_DELAY_SECONDS:
            raise ValueError(
                f"seconds must be more than 0 and at most {MAX_DELAY_SECONDS} "
                "(or give an RFC 3339 instant)"
            )
        return value

    @model_validator(mode="after")
    def _one_delay(self) -> RunRequest:
        if self.countdown is not None and self.eta is not None:
            raise ValueError("give countdown or eta, not both")
        # A worker holds a message with an eta in memory until it is due: not for years.
        if self.eta is not None and self.eta.timestamp() - time.time() > MAX_DELAY_SECONDS:
            raise ValueError(f"eta: more than {MAX_DELAY_SECONDS} s from now")
        return self


class Submitted(BaseModel):
    """A submitted run: its id and where to follow it."""

    id: str
    url: str


class TaskOut(BaseModel):
    """A submittable task and the workers that reported it."""

    name: str
    workers: list[str]


class TaskList(BaseModel):
    """Submittable tasks."""

    items: list[TaskOut]


class RunError(BaseModel):
    """Why a run failed."""

    type: str | None
    message: str | None
    traceback: str | None = None


class Attempt(BaseModel):
    """One ended attempt of a run that retried."""

    attempt: int = Field(description="1 for the first attempt")
    state: str = Field(description="RETRY (it failed and is retried), SUCCESS, FAILURE or REVOKED")
    started_at: str | None = None
    finished_at: str | None = None
    worker: str | None = None
    error: str | None = Field(default=None, description="Why it failed: type and message")


class Run(BaseModel):
    """A run's state, result or error, and times (RFC 3339, UTC)."""

    id: str
    task: str
    state: str
    schedule: str | None = None
    source: str | None = None
    worker: str | None = None
    retries: int = 0
    attempts: list[Attempt] = Field(
        default_factory=list,
        description="The ended attempts of a run that retried, oldest first (empty otherwise)",
    )
    next_attempt_at: str | None = Field(
        default=None, description="When a retrying run's next attempt is due"
    )
    reason: str | None = None
    args: Any = None
    kwargs: Any = None
    overrides: Any = Field(
        default=None, description="A run-now's own args/kwargs, as the trigger gave them"
    )
    result: Any = None
    result_truncated: bool = False
    error: RunError | None = None
    scheduled_at: str | None = Field(
        default=None, description="The slot it ran for (RFC 3339 UTC, to the millisecond)"
    )
    created_at: str | None = Field(default=None, description="RFC 3339 UTC, to the millisecond")
    received_at: str | None = Field(default=None, description="RFC 3339 UTC, to the millisecond")
    started_at: str | None = Field(default=None, description="RFC 3339 UTC, to the millisecond")
    finished_at: str | None = Field(default=None, description="RFC 3339 UTC, to the millisecond")


class RunPage(BaseModel):
    """A page of runs, newest first."""

    items: list[Run]
    limit: int
    offset: int
    next: str | None = Field(description="URL of the next page, if there may be one")


class Revoked(BaseModel):
    """A revoke request sent to the workers."""

    id: str
    terminate: bool
    state: str


class ScheduleMetadata(BaseModel):
    """A ScheduledTask's identity; fields a server fills in (uid...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)
    namespace: str = Field(
        default="default", min_length=1, max_length=63, pattern=NAMESPACE_PATTERN
    )
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ScheduleCreate(_Body):
    """A ScheduledTask as ``kubectl apply`` takes it; ``spec`` follows design §3."""

    apiVersion: Literal["forwarder.dev/v1alpha1"] = "forwarder.dev/v1alpha1"
    kind: Literal["ScheduledTask"] = "ScheduledTask"
    metadata: ScheduleMetadata
    spec: dict[str, Any]
    status: dict[str, Any] | None = Field(default=None, description="Ignored")


class SchedulePatch(_Body):
    """A JSON merge patch (RFC 7386) of a spec: ``null`` removes a field."""

    spec: dict[str, Any]


class ScheduleOutMetadata(BaseModel):
    """Identity of a returned schedule."""

    name: str
    namespace: str
    uid: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    file: str | None = Field(default=None, description="Local mode: the file declaring it")


class ScheduleOut(BaseModel):
    """A ScheduledTask with its status (from the resource, or the store in local mode)."""

    apiVersion: str = API_VERSION
    kind: str = KIND
    metadata: ScheduleOutMetadata
    spec: dict[str, Any]
    status: dict[str, Any] | None = None


class ScheduleList(BaseModel):
    """ScheduledTasks, by namespace and name."""

    items: list[ScheduleOut]


class TriggerRequest(_Body):
    """A run-now's own arguments (both optional): ``args`` replace the spec's, ``kwargs`` are
    merged over the spec's. The run record keeps them as ``overrides``."""

    args: Args | None = Field(default=None, description="Replace the spec's args")
    kwargs: Kwargs | None = Field(default=None, description="Merged over the spec's kwargs")


class TriggerOut(BaseModel):
    """A run-now: the run id and URL when the API fired it (local mode), or the
    ``forwarder.dev/run-now`` value it set for the operator (cluster mode)."""

    namespace: str
    name: str
    id: str | None = None
    url: str | None = None
    runNow: str | None = None


class ResumeOut(BaseModel):
    """A resume of a schedule suspended after failures: done (local mode), or the
    ``forwarder.dev/resume`` value set for the operator (cluster mode)."""

    namespace: str
    name: str
    resumed: bool = Field(description="True when the API resumed it itself (local mode)")
    resume: str | None = Field(default=None, description="The annotation value set (cluster)")


class BackfillRequest(_Body):
    """A past window ``[start, end)`` whose slots run once each (RFC 3339 times with a zone)."""

    start: str = Field(description="The window's start (included), e.g. 2026-12-06T10:00:00Z")
    end: str = Field(description="The window's end (excluded), not after now")

    @field_validator("start", "end")
    @classmethod
    def _instant(cls, value: str, info: ValidationInfo) -> str:
        # The core's reader, so every door takes the same times (raises a ValueError).
        parse_instant(value, str(info.field_name))
        return value

    def window(self) -> Window:
        """The window asked."""
        return Window(parse_instant(self.start, "start"), parse_instant(self.end, "end"))


class BackfilledRun(BaseModel):
    """One backfilled slot's run."""

    scheduledAt: str
    id: str
    url: str | None = None


class SkippedSlot(BaseModel):
    """A slot concurrencyPolicy skipped (no run record: ask again once the run ended)."""

    scheduledAt: str
    reason: str


class BackfillOut(BaseModel):
    """A backfill: what became of each slot (local mode), or the ``forwarder.dev/backfill``
    value set for the operator, which reports the outcome as an Event (cluster mode)."""

    namespace: str
    name: str
    window: str = Field(description="'<start>/<end>' in UTC")
    slots: int = Field(description="Slots of the schedule in the window")
    sent: list[BackfilledRun] = Field(default_factory=list)
    alreadyRun: list[str] = Field(
        default_factory=list, description="Slots backfilled before, or run when they were due"
    )
    leftToSchedule: list[str] = Field(
        default_factory=list, description="Slots the scheduler has not passed yet (it fires them)"
    )
    skipped: list[SkippedSlot] = Field(default_factory=list)
    backfill: str | None = Field(default=None, description="The annotation value set (cluster)")


class LogTail(BaseModel):
    """The last lines of a component's log."""

    component: str
    lines: list[str]


def json_response(body: bytes, status_code: int = 200) -> Response:
    """An answer whose JSON is already serialized (with a model's TypeAdapter): what FastAPI
    sends for a route's response model, without validating the model once more first."""
    return Response(body, status_code=status_code, media_type="application/json")


class PreviewSlot(BaseModel):
    """One upcoming fire time: in the schedule's zone and in UTC, and how a DST change moved
    it (absent when it did not)."""

    local: str = Field(description="RFC 3339 with the zone's offset")
    utc: str = Field(description="RFC 3339 UTC")
    dst: str | None = Field(default=None, description="e.g. 'shifted +1h: 02:30 does not exist'")


class SchedulePreview(BaseModel):
    """The next fire times of a schedule (its window, maxRuns and exclusions applied)."""

    namespace: str
    name: str
    timeZone: str
    items: list[PreviewSlot]
