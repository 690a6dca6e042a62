"""The ``ScheduledTask`` spec as a pydantic model, with one clear message per mistake.

The operator, local mode and the api all validate with this model, so a bad spec reads the
same everywhere: ``spec.schedule.cron: ...``. Validation needs no Redis and no cluster.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from forwarder_worker.schedules.timing import (
    CRON_ALIASES,
    CronTimetable,
    IntervalTimetable,
    OneOffTimetable,
    Timetable,
    parse_dates,
)
from forwarder_worker.values import check_json_value

_DURATION = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")
TASK_NAME = r"^[A-Za-z_][A-Za-z0-9_.:-]*$"
MAX_RETRY_LIMIT = 50
"""Retries per run at most (each attempt is kept on the run record)."""
MAX_RETRY_BACKOFF = 86400
"""Longest wait before a retry, in seconds."""
MAX_TIMEOUT_SECONDS = 86400
"""Longest ``timeoutSeconds``."""
MAX_SUSPEND_AFTER = 1000
"""Largest ``suspendAfterFailures``."""


class InvalidSpec(ValueError):
    """A ScheduledTask spec that cannot be scheduled; the message names field and problem."""


def parse_duration(value: str | int) -> int:
    """Seconds in ``90``, ``"90s"``, ``"5m"`` or ``"1h30m"``."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like '30s', '5m', '1h30m' or whole seconds")
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.isdigit():
        return int(text)
    match = _DURATION.match(text)
    if not text or match is None:
        raise ValueError(f"{value!r} is not a duration like '30s', '5m', '1h30m' or whole seconds")
    parts = {k: int(v) for k, v in match.groupdict(default="0").items()}
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


def check_cron(value: str) -> str:
    """A 5-field cron expression or an ``@`` alias, stripped; ValueError says what is wrong."""
    expression = value.strip()
    if expression.startswith("@"):
        if expression not in CRON_ALIASES:
            raise ValueError(
                f"{value!r} is not a cron alias; use one of {', '.join(sorted(CRON_ALIASES))}"
            )
        return expression
    if len(expression.split()) != 5:
        raise ValueError(
            f"{value!r} is not a 5-field cron expression (minute hour day month weekday)"
        )
    if not croniter.is_valid(expression):
        raise ValueError(f"{value!r} is not a valid cron expression")
    return expression


class _Strict(BaseModel):
    # Unknown fields are mistakes (a typo like `suspended` would otherwise be ignored).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ScheduleSpec(_Strict):
    """Exactly one of ``every``, ``cron`` or ``at``."""

    every: int | str | None = None
    cron: str | None = None
    at: datetime | None = None

    @field_validator("every")
    @classmethod
    def _every(cls, value: int | str | None) -> int | None:
        if value is None:
            return None
        seconds = parse_duration(value)
        if seconds < 1:
            raise ValueError(f"interval {value!r} is below the minimum of 1s")
        return seconds

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> ScheduleSpec:
        given = [k for k in ("every", "cron", "at") if getattr(self, k) is not None]
        if len(given) != 1:
            detail = "none is set" if not given else f"{' and '.join(given)} are both set"
            raise ValueError(f"exactly one of every, cron or at is required ({detail})")
        return self

    @property
    def kind(self) -> Literal["every", "cron", "at"]:
        """Which of the three schedule kinds this is."""
        if self.every is not None:
            return "every"
        return "cron" if self.cron is not None else "at"

    def describe(self) -> str:
        """A short form for printer columns and logs: ``every 30s``, ``cron */5 * * * *``."""
        if self.every is not None:
            return f"every {self.every}s"
        if self.cron is not None:
            return f"cron {self.cron}"
        return f"at {self.one_off().astimezone(UTC).isoformat().replace('+00:00', 'Z')}"

    def one_off(self) -> datetime:
        """The instant of an ``at`` schedule; ValueError for an ``every`` or ``cron`` one."""
        if self.at is None:
            raise ValueError(f"a schedule with {self.kind} is not a one-off 'at' schedule")
        return self.at


class ExclusionsSpec(_Strict):
    """Slots that do not fire, read in the spec's ``timeZone``: any slot whose local time
    matches one of ``cron`` (to the minute), or that falls on one of ``dates``."""

    cron: list[str] = Field(default_factory=list, max_length=50)
    dates: list[str] = Field(default_factory=list, max_length=1000)

    @field_validator("cron")
    @classmethod
    def _crons(cls, values: list[str]) -> list[str]:
        checked = []
        for index, value in enumerate(values):
            try:
                expression = check_cron(value)
            except ValueError as exc:
                raise ValueError(f"[{index}]: {exc}") from None
            if expression.split() == ["*"] * 5:
                # It matches every minute: the schedule would never fire again.
                raise ValueError(f"[{index}]: {value!r} excludes every slot")
            checked.append(expression)
        return checked

    @field_validator("dates")
    @classmethod
    def _dates(cls, values: list[str]) -> list[str]:
        for index, value in enumerate(values):
            try:
                parse_dates([value])
            except ValueError as exc:
                raise ValueError(f"[{index}]: {exc}") from None
        return values


class RetrySpec(_Strict):
    """``spec.retries``: how a failed run is tried again, with Celery's retry (the same run
    id, a new attempt), after ``backoff`` doubling per attempt up to ``maxBackoff``."""

    limit: StrictInt = Field(le=MAX_RETRY_LIMIT)
    # Kubernetes Job's back-off: 10 s, doubling, at most 6 minutes.
    backoff: int | str = 10
    max_backoff: int | str = Field(default=360, alias="maxBackoff")

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"{value} is negative; give 0 (no retries) to {MAX_RETRY_LIMIT}")
        return value

    @field_validator("backoff", "max_backoff")
    @classmethod
    def _delay(cls, value: int | str) -> int:
        seconds = parse_duration(value)
        if not 1 <= seconds <= MAX_RETRY_BACKOFF:
            raise ValueError(f"{value!r} is not between 1s and {MAX_RETRY_BACKOFF}s")
        return seconds

    @model_validator(mode="after")
    def _ordered(self) -> RetrySpec:
        if int(self.max_backoff) < int(self.backoff):
            raise ValueError(f"maxBackoff ({self.max_backoff}s) is below backoff ({self.backoff}s)")
        return self

    def as_policy(self) -> dict[str, int]:
        """The policy as entries and message headers carry it."""
        return {
            "limit": self.limit,
            "backoff": int(self.backoff),
            "maxBackoff": int(self.max_backoff),
        }


class ScheduledTaskSpec(_Strict):
    """``spec`` of a ScheduledTask (design §3)."""

    task: str = Field(min_length=1, max_length=200, pattern=TASK_NAME)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    schedule: ScheduleSpec
    time_zone: str = Field(default="UTC", alias="timeZone")
    # Strict: YAML's `suspend: "yes"` is a string, and guessing its truth is a surprise.
    suspend: StrictBool = False
    starting_deadline_seconds: int | None = Field(
        default=None, alias="startingDeadlineSeconds", ge=1, le=86400 * 7
    )
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = Field(
        default="Allow", alias="concurrencyPolicy"
    )
    jitter_seconds: int = Field(default=0, alias="jitterSeconds", ge=0, le=3600)
    queue: str = Field(
        default="default", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$"
    )
    priority: int | None = Field(default=None, ge=0, le=9)
    # -- runs: retries, time limit, pause after failures (issue 19, the runs side) --
    retries: RetrySpec | None = None
    timeout_seconds: int | None = Field(
        default=None, alias="timeoutSeconds", ge=1, le=MAX_TIMEOUT_SECONDS
    )
    suspend_after_failures: int | None = Field(
        default=None, alias="suspendAfterFailures", ge=1, le=MAX_SUSPEND_AFTER
    )
    # -- end of the runs block --
    run_history_limit: int = Field(default=10, alias="runHistoryLimit", ge=1, le=100)
    # The window and the limit (issue 19): slots before startTime or at/after endTime never
    # fire, and after maxRuns firings the schedule is complete.
    start_time: datetime | None = Field(default=None, alias="startTime")
    end_time: datetime | None = Field(default=None, alias="endTime")
    max_runs: int | None = Field(default=None, alias="maxRuns", ge=1, le=1_000_000_000)
    exclusions: ExclusionsSpec | None = None
    # After an outage (beat away, Redis unreachable): fire the latest missed slot (CronJob's
    # rule, the default), every missed slot (oldest first, at most MAX_MISSED_RUNS), or none;
    # always within startingDeadlineSeconds.
    missed_run_policy: Literal["Latest", "All", "Skip"] = Field(
        default="Latest", alias="missedRunPolicy"
    )

    @field_validator("args", "kwargs")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        check_json_value(value)
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a known IANA time zone") from None
        return value

    @model_validator(mode="after")
    def _fires(self, info: ValidationInfo) -> ScheduledTaskSpec:
        context = info.context or {}
        now = float(context.get("now", time.time()))
        zone = ZoneInfo(self.time_zone)
        for field in ("start_time", "end_time"):
            value = getattr(self, field)
            if value is not None and value.tzinfo is None:
                # A naive time is read in the spec's zone, as a cron would be.
                object.__setattr__(self, field, value.replace(tzinfo=zone))
        if (
            self.start_time is not None
            and self.end_time is not None
            and self.end_time <= self.start_time
        ):
            raise ValueError(
                f"endTime: {self.end_time.isoformat()} is not after startTime "
                f"{self.start_time.isoformat()}"
            )
        at = self.schedule.at
        if at is not None:
            if at.tzinfo is None:
                # A naive `at` is read in the spec's zone, as a cron would be.
                at = at.replace(tzinfo=ZoneInfo(self.time_zone))
                object.__setattr__(self, "schedule", self.schedule.model_copy(update={"at": at}))
            if not context.get("allow_past_at") and at.timestamp() <= now:
                raise ValueError(f"schedule.at: {at.isoformat()} is in the past")
        if self.schedule.cron is not None:
            try:
                upcoming = self.timetable().next_after(now)
            except Exception as exc:  # croniter signals impossible dates with several types
                raise ValueError(f"schedule.cron: {self.schedule.cron!r} never fires") from exc
            if upcoming is None:
                raise ValueError(f"schedule.cron: {self.schedule.cron!r} never fires")
        return self

    def timetable(self, anchor: float | None = None) -> Timetable:
        """When this spec fires; ``anchor`` is the first slot of an interval schedule."""
        schedule = self.schedule
        if schedule.every is not None:
            # A str only before validation: the validator makes every duration whole seconds.
            return IntervalTimetable(
                float(schedule.every), time.time() if anchor is None else anchor
            )
        if schedule.cron is not None:
            return CronTimetable(schedule.cron, self.time_zone)
        return OneOffTimetable(schedule.one_off().timestamp())


def _location(loc: tuple[int | str, ...]) -> str:
    names = {
        "time_zone": "timeZone",
        "starting_deadline_seconds": "startingDeadlineSeconds",
        "concurrency_policy": "concurrencyPolicy",
        "jitter_seconds": "jitterSeconds",
        "run_history_limit": "runHistoryLimit",
        "start_time": "startTime",
        "end_time": "endTime",
        "max_runs": "maxRuns",
        "missed_run_policy": "missedRunPolicy",
        "max_backoff": "maxBackoff",
        "timeout_seconds": "timeoutSeconds",
        "suspend_after_failures": "suspendAfterFailures",
    }
    return ".".join(["spec", *(names.get(str(part), str(part)) for part in loc)])


def format_errors(error: ValidationError) -> str:
    """One line per problem, each naming the field: ``spec.priority: ...``."""
    lines = []
    for item in error.errors(include_url=False):
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "is not a known field"
        if item["loc"] and message.startswith("["):
            # A list item's own problem: ``spec.exclusions.cron[0]: ...``.
            lines.append(f"{_location(tuple(item['loc']))}{message}")
        elif item["loc"]:
            lines.append(f"{_location(tuple(item['loc']))}: {message}")
        elif message.startswith(("schedule.", "endTime:")):
            lines.append(f"spec.{message}")  # a cross-field check that names its own field
        else:
            lines.append(f"spec: {message}")
    return "; ".join(lines)


def parse_spec(
    raw: Any, *, now: float | None = None, allow_past_at: bool = False
) -> ScheduledTaskSpec:
    """Validate a raw spec mapping, raising InvalidSpec with every problem named.

    ``allow_past_at`` is for re-reading a one-off that was valid when it was created.
    """
    if not isinstance(raw, dict):
        raise InvalidSpec(f"spec: must be a mapping, not {type(raw).__name__}")
    context = {"now": time.time() if now is None else now, "allow_past_at": allow_past_at}
    try:
        return ScheduledTaskSpec.model_validate(raw, context=context)
    except ValidationError as exc:
        raise InvalidSpec(format_errors(exc)) from None
