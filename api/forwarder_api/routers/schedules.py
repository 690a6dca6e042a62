"""``/schedules``: ScheduledTasks over HTTP, in the cluster or in local mode's folder.

The backend (chosen by ``FORWARDER_SCHEDULES_MODE``) does the work; see
:mod:`forwarder_api.schedules`. Validation errors are 422 with the operator's messages.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from forwarder_worker.dispatch.backfill import format_instant
from forwarder_worker.dispatch.dispatcher import Overrides
from forwarder_worker.schedules.preview import MAX_PREVIEW, describe_slot, preview
from forwarder_worker.schedules.store import Entry

from forwarder_api.deps import Authorized, SchedulesDep, StoreDep
from forwarder_api.models import (
    BackfilledRun,
    BackfillOut,
    BackfillRequest,
    PreviewSlot,
    ResumeOut,
    ScheduleCreate,
    ScheduleList,
    ScheduleOut,
    ScheduleOutMetadata,
    SchedulePatch,
    SchedulePreview,
    SkippedSlot,
    TriggerOut,
    TriggerRequest,
)
from forwarder_api.schedules import ScheduleView, validate_spec

router = APIRouter(prefix="/schedules", tags=["schedules"], dependencies=[Authorized])

Namespace = Annotated[str, Path(min_length=1, max_length=63)]
Name = Annotated[str, Path(min_length=1, max_length=253)]
ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "A namespace this api does not serve, or its RBAC refuses"},
    404: {"description": "No such schedule"},
    422: {"description": "Invalid spec (the operator's message)"},
    503: {"description": "The schedule source is unreachable or not configured"},
}


def to_out(view: ScheduleView) -> ScheduleOut:
    """A schedule in resource shape."""
    return ScheduleOut(
        metadata=ScheduleOutMetadata(
            name=view.name,
            namespace=view.namespace,
            uid=view.uid,
            labels=view.labels,
            annotations=view.annotations,
            file=view.file,
        ),
        spec=view.spec,
        status=view.status,
    )


@router.get("", responses=ERRORS)
def list_schedules(
    schedules: SchedulesDep,
    namespace: Annotated[str | None, Query(min_length=1, max_length=63)] = None,
) -> ScheduleList:
    """Every ScheduledTask, or those of one namespace."""
    return ScheduleList(items=[to_out(v) for v in schedules.list(namespace)])


@router.post("", status_code=201, responses={**ERRORS, 409: {"description": "Exists"}})
def create_schedule(body: ScheduleCreate, schedules: SchedulesDep) -> ScheduleOut:
    """Declare a ScheduledTask (the document ``kubectl apply`` takes)."""
    meta = body.metadata
    return to_out(
        schedules.create(meta.namespace, meta.name, body.spec, meta.labels, meta.annotations)
    )


@router.get("/{namespace}/{name}", responses=ERRORS)
def get_schedule(namespace: Namespace, name: Name, schedules: SchedulesDep) -> ScheduleOut:
    """One ScheduledTask with its status."""
    return to_out(schedules.get(namespace, name))


@router.patch("/{namespace}/{name}", responses=ERRORS)
def patch_schedule(
    namespace: Namespace, name: Name, body: SchedulePatch, schedules: SchedulesDep
) -> ScheduleOut:
    """Merge-patch the spec, e.g. ``{"spec": {"suspend": true}}``."""
    return to_out(schedules.patch(namespace, name, body.spec))


@router.delete("/{namespace}/{name}", status_code=204, responses=ERRORS)
def delete_schedule(namespace: Namespace, name: Name, schedules: SchedulesDep) -> Response:
    """Remove a ScheduledTask; its schedule entry goes with it."""
    schedules.delete(namespace, name)
    return Response(status_code=204)


@router.post(
    "/{namespace}/{name}/trigger",
    status_code=202,
    responses={**ERRORS, 409: {"description": "Not loaded yet, or concurrencyPolicy Forbid"}},
)
def trigger_schedule(
    namespace: Namespace,
    name: Name,
    request: Request,
    schedules: SchedulesDep,
    body: TriggerRequest | None = None,
) -> TriggerOut:
    """Run the schedule's task once now (like the ``forwarder.dev/run-now`` annotation),
    optionally with other arguments: ``args`` replace the spec's, ``kwargs`` are merged over
    the spec's."""
    overrides = None
    if body is not None and (body.args is not None or body.kwargs is not None):
        overrides = Overrides(body.args, body.kwargs)
    done = schedules.trigger(namespace, name, overrides)
    url = str(request.url_for("get_run", run_id=done.run_id)) if done.run_id else None
    return TriggerOut(
        namespace=done.namespace, name=done.name, id=done.run_id, url=url, runNow=done.run_now
    )


@router.get("/{namespace}/{name}/preview", responses=ERRORS)
def preview_schedule(
    namespace: Namespace,
    name: Name,
    schedules: SchedulesDep,
    store: StoreDep,
    count: Annotated[int, Query(ge=1, le=MAX_PREVIEW, description="How many fire times")] = 10,
) -> SchedulePreview:
    """The next ``count`` fire times, with the window, maxRuns and exclusions applied: from
    the live entry (its grid, the runs it has left) when beat holds this spec, else as if
    the spec were applied now. Each time is given in the schedule's zone and in UTC."""
    view = schedules.get(namespace, name)
    spec = validate_spec(view.spec, None, allow_past_at=True)
    stored = store.get(f"{namespace}/{name}")
    if stored is not None and stored.entry.uid != view.uid:
        stored = None  # an entry of an older resource of the same name
    entry = Entry.from_spec(f"{namespace}/{name}", spec)
    items = []
    for at in preview(spec, count, stored=stored):
        slot = describe_slot(entry, at)
        items.append(PreviewSlot(local=slot.local, utc=slot.utc, dst=slot.dst or None))
    return SchedulePreview(namespace=namespace, name=name, timeZone=spec.time_zone, items=items)


@router.post(
    "/{namespace}/{name}/resume",
    status_code=202,
    responses={**ERRORS, 409: {"description": "Not suspended after failures"}},
)
def resume_schedule(namespace: Namespace, name: Name, schedules: SchedulesDep) -> ResumeOut:
    """Resume a schedule that ``suspendAfterFailures`` suspended (like the
    ``forwarder.dev/resume`` annotation): it fires again from its next slot, and its count of
    failed runs in a row starts again."""
    done = schedules.resume(namespace, name)
    return ResumeOut(
        namespace=done.namespace, name=done.name, resumed=done.resumed, resume=done.resume
    )


@router.post(
    "/{namespace}/{name}/backfill",
    status_code=202,
    responses={
        **ERRORS,
        409: {"description": "Not loaded into the scheduler yet"},
        422: {"description": "A bad window: not RFC 3339, empty, in the future, over the cap"},
    },
)
def backfill_schedule(
    namespace: Namespace,
    name: Name,
    body: BackfillRequest,
    request: Request,
    schedules: SchedulesDep,
) -> BackfillOut:
    """Run every slot of the past window ``[start, end)`` once (like the
    ``forwarder.dev/backfill`` annotation), as runs of source ``backfill`` scheduled at their
    slots. Slots backfilled before or already run are not run again; concurrencyPolicy
    applies. In a cluster the operator runs them and reports the outcome as an Event."""
    asked = schedules.backfill(namespace, name, body.window())
    out = BackfillOut(
        namespace=asked.namespace,
        name=asked.name,
        window=str(asked.window),
        slots=asked.slots,
        backfill=asked.backfill,
    )
    done = asked.done
    if done is not None:
        out.sent = [
            BackfilledRun(
                scheduledAt=format_instant(o.firing.slot),
                id=o.run_id,
                url=str(request.url_for("get_run", run_id=o.run_id)),
            )
            for o in done.sent
        ]
        out.alreadyRun = [format_instant(slot) for slot in done.done]
        out.leftToSchedule = [format_instant(slot) for slot in done.beats]
        out.skipped = [
            SkippedSlot(scheduledAt=format_instant(o.firing.slot), reason=o.reason or "skipped")
            for o in done.skipped
        ]
    return out
