"""``/runs``: one run's state and result, the recent history, and revoking a run."""

from __future__ import annotations

import json
from typing import Annotated, Any

from celery import Celery
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from forwarder_worker.runs.records import RunRecord
from forwarder_worker.schedules.timing import utc_iso
from pydantic import TypeAdapter

from forwarder_api.deps import (
    Authorized,
    CeleryDep,
    LeanRoute,
    RunLogDep,
    SettingsDep,
    services_of,
)
from forwarder_api.errors import Conflict, NotFound
from forwarder_api.models import (
    Attempt,
    Revoked,
    Run,
    RunError,
    RunPage,
    RunState,
    json_response,
)

router = APIRouter(prefix="/runs", tags=["runs"], dependencies=[Authorized], route_class=LeanRoute)

RunId = Annotated[str, Path(min_length=1, max_length=200)]
# Longest long poll: under the idle timeouts of common proxies and load balancers (60 s).
MAX_WAIT_SECONDS = 55
RUN_JSON = TypeAdapter(Run)


def _json(text: str | None) -> tuple[Any, bool]:
    """A recorded JSON value, or the raw text and whether it was cut short."""
    if text is None:
        return None, False
    try:
        return json.loads(text), False
    except ValueError:
        return text, text.endswith("…")


def attempts_of(record: RunRecord) -> list[Attempt]:
    """The attempts a run record lists (the run log writes them; anything else is skipped)."""
    items, _ = _json(record.attempts)
    if not isinstance(items, list):
        return []
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("attempt"), int):
            continue
        started, finished = (
            utc_iso(t, ms=True) if isinstance(t, (int, float)) else None
            for t in (item.get("started"), item.get("finished"))
        )
        out.append(
            Attempt(
                attempt=item["attempt"],
                state=str(item.get("state") or ""),
                started_at=started,
                finished_at=finished,
                worker=item.get("worker") if isinstance(item.get("worker"), str) else None,
                error=item.get("error") if isinstance(item.get("error"), str) else None,
            )
        )
    return out


def to_run(record: RunRecord, *, show_traceback: bool) -> Run:
    """A run record as the API shows it."""
    result, truncated = _json(record.result)
    error = None
    if record.error_type or record.error:
        error = RunError(
            type=record.error_type,
            message=record.error,
            traceback=record.traceback if show_traceback else None,
        )
    return Run(
        id=record.id,
        task=record.task,
        state=record.state,
        schedule=record.schedule,
        source=record.source,
        worker=record.worker,
        retries=record.retries,
        attempts=attempts_of(record),
        next_attempt_at=utc_iso(record.retry_at) if record.state == "RETRY" else None,
        reason=record.reason,
        args=_json(record.args)[0],
        kwargs=_json(record.kwargs)[0],
        overrides=_json(record.overrides)[0],
        result=result,
        result_truncated=truncated,
        error=error,
        scheduled_at=utc_iso(record.slot, ms=True),
        created_at=utc_iso(record.created, ms=True),
        received_at=utc_iso(record.received, ms=True),
        started_at=utc_iso(record.started, ms=True),
        finished_at=utc_iso(record.finished, ms=True),
    )


@router.get("")
def list_runs(
    request: Request,
    runs: RunLogDep,
    settings: SettingsDep,
    task: Annotated[str | None, Query(max_length=200)] = None,
    schedule: Annotated[str | None, Query(max_length=320, description="<namespace>/<name>")] = None,
    state: RunState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> RunPage:
    """Recent runs, newest first, filtered by task, schedule and state."""
    records = runs.recent(schedule=schedule, task=task, state=state, limit=limit + 1, offset=offset)
    items = [to_run(r, show_traceback=settings.api_show_traceback) for r in records[:limit]]
    following = None
    if len(records) > limit:
        following = str(request.url.include_query_params(offset=offset + limit))
    return RunPage(items=items, limit=limit, offset=offset, next=following)


@router.get(
    "/{run_id}",
    name="get_run",
    response_model=Run,
    responses={404: {"description": "Never submitted"}},
)
async def get_run(
    run_id: RunId,
    request: Request,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="Long poll: hold the request for up to this many seconds and answer "
            "as soon as the run has ended (SUCCESS, FAILURE, REVOKED or SKIPPED); a run still "
            "going when the wait runs out, or when the API is stopping, is answered as it is. "
            "0 (default): answer at once.",
        ),
    ] = 0,
) -> Response:
    """A run's state, result or error, and times; with ``wait``, once it has ended."""
    # The polling hot path: read on the event loop (no threadpool hop), the services taken
    # from the request rather than through a dependency, and the answer serialized here
    # (FastAPI would validate the Run it was given once more first).
    services = services_of(request)
    watch = services.watch
    record = await watch.wait(run_id, wait) if wait else await watch.get(run_id)
    if record is None:
        raise NotFound(f"run {run_id!r} was never submitted (or its record has expired)")
    run = to_run(record, show_traceback=services.settings.api_show_traceback)
    if run.result_truncated and record.state == "SUCCESS":
        # The record keeps a bounded copy; the result backend still has all of it.
        run = await run_in_threadpool(_with_full_result, services.core.app, run)
    return json_response(RUN_JSON.dump_json(run, by_alias=True))


def run_path(run_id: str) -> str:
    """The path of ``GET /runs/{run_id}`` (what ``url_for`` finds, without a route walk)."""
    return f"{router.prefix}/{run_id}"


def _with_full_result(celery: Celery, run: Run) -> Run:
    backend = celery.AsyncResult(run.id)
    if backend.state == "SUCCESS":
        return run.model_copy(update={"result": backend.result, "result_truncated": False})
    return run


@router.delete(
    "/{run_id}",
    status_code=202,
    responses={404: {"description": "Never submitted"}, 409: {"description": "Finished"}},
)
def revoke_run(
    run_id: RunId, runs: RunLogDep, celery: CeleryDep, terminate: bool = False
) -> Revoked:
    """Revoke a run: a queued one is dropped; ``terminate=true`` also stops a running one."""
    record = runs.get(run_id)
    if record is None:
        raise NotFound(f"run {run_id!r} was never submitted (or its record has expired)")
    if record.final:
        raise Conflict(f"run {run_id} has already finished ({record.state})")
    celery.control.revoke(run_id, terminate=terminate, signal="SIGTERM")
    return Revoked(id=run_id, terminate=terminate, state=record.state)
