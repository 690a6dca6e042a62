"""``/tasks``: which tasks may be submitted, and submitting a run of one."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request, Response
from kombu.exceptions import OperationalError

from forwarder_api.deps import Authorized, CatalogDep, CeleryDep, MetricsDep, RunLogDep
from forwarder_api.models import RunRequest, Submitted, TaskList, TaskOut

router = APIRouter(prefix="/tasks", tags=["tasks"], dependencies=[Authorized])

TaskName = Annotated[str, Path(min_length=1, max_length=200)]


@router.get("")
def list_tasks(catalog: CatalogDep) -> TaskList:
    """The registered tasks the allow-list admits, with the workers that reported each."""
    return TaskList(
        items=[TaskOut(name=t.name, workers=list(t.workers)) for t in catalog.listing()]
    )


@router.post(
    "/{name}/runs",
    status_code=202,
    responses={404: {"description": "Unknown or not allowed"}, 413: {"description": "Too big"}},
)
def submit_run(
    name: TaskName,
    request: Request,
    response: Response,
    catalog: CatalogDep,
    runs: RunLogDep,
    celery: CeleryDep,
    metrics: MetricsDep,
    body: Annotated[RunRequest | None, Body()] = None,
) -> Submitted:
    """Queue one run of task ``name``; answers 202 with its id and URL."""
    catalog.require(name)
    run = body or RunRequest()
    run_id = str(uuid.uuid4())
    options: dict[str, Any] = {}
    if run.queue is not None:
        options["queue"] = run.queue
    if run.priority is not None:
        options["priority"] = run.priority
    if run.countdown is not None:
        options["countdown"] = run.countdown
    if run.eta is not None:
        options["eta"] = run.eta
    expires_at: float | None = None
    if run.expires is not None:
        options["expires"] = run.expires
        expires_at = (
            run.expires.timestamp()
            if isinstance(run.expires, datetime)
            else time.time() + run.expires
        )
    # Recorded before it is sent, so GET /runs/{id} knows the id from the first instant
    # and an id never submitted is a 404 rather than Celery's eternal PENDING.
    runs.queued(run_id, name, source="api", args=run.args, kwargs=run.kwargs)
    if expires_at is not None:
        runs.transition(run_id, "PENDING", expires=expires_at)
    try:
        celery.send_task(name, args=run.args, kwargs=run.kwargs, task_id=run_id, **options)
    except OperationalError as exc:
        runs.transition(
            run_id,
            "FAILURE",
            finished=time.time(),
            error_type="BrokerUnavailable",
            error=f"could not be sent: {exc}",
        )
        raise
    metrics.submitted.labels(name).inc()
    url = str(request.url_for("get_run", run_id=run_id))
    response.headers["Location"] = url
    return Submitted(id=run_id, url=url)
