"""``/tasks``: which tasks may be submitted, and submitting a run of one."""

from __future__ import annotations

import functools
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from forwarder_worker.dispatch import publish_batch
from kombu.exceptions import KombuError
from starlette.datastructures import URL, URLPath
from starlette.types import Scope

from forwarder_api.deps import Authorized, CatalogDep, services_of
from forwarder_api.models import RunRequest, Submitted, TaskList, TaskOut
from forwarder_api.routers.runs import run_path
from forwarder_api.services import Services

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
async def submit_run(
    name: TaskName,
    request: Request,
    response: Response,
    body: Annotated[RunRequest | None, Body()] = None,
) -> Submitted:
    """Queue one run of task ``name``; answers 202 with its id and URL."""
    # This is the interactive hot path: the services taken from the request rather than
    # through dependencies (FastAPI solves those on every call), and the blocking work in one
    # threadpool hop (a sync endpoint takes two: the call, then the response validation).
    services = services_of(request)
    run_id = await run_in_threadpool(_submit, services, name, body or RunRequest())
    services.metrics.submitted.labels(name).inc()
    url = _runs_url(request.scope) + run_id
    response.headers["Location"] = url
    return Submitted(id=run_id, url=url)


def _runs_url(scope: Scope) -> str:
    """The absolute URL of ``GET /runs/`` as the client addressed this app: what
    ``request.url_for`` would give, without building URL objects on every submit."""
    host = next((value for key, value in scope["headers"] if key == b"host"), None)
    root = scope.get("app_root_path", scope.get("root_path", ""))
    return _runs_url_of(scope["scheme"], host, tuple(scope.get("server") or ()) or None, root)


@functools.lru_cache(maxsize=256)
def _runs_url_of(scheme: str, host: bytes | None, server: tuple[str, int] | None, root: str) -> str:
    scope: dict[str, Any] = {
        "type": "http",
        "scheme": scheme,
        "server": server,
        "root_path": root,
        "path": root if root.endswith("/") else f"{root}/",
        "query_string": b"",
        "headers": [] if host is None else [(b"host", host)],
    }
    return str(URLPath(run_path("")).make_absolute_url(URL(scope=scope)))


def _submit(services: Services, name: str, run: RunRequest) -> str:
    """Check, record and send one run of ``name``; its id. Blocks: Redis round trips, and
    maybe asking the workers what they registered."""
    services.catalog.require(name)
    runs, celery = services.runs, services.celery
    run_id = str(uuid.uuid4())
    # The queue is always named, as beat's dispatcher does (no task routes are configured),
    # so it can be declared once per process and the publish skip the per-message check.
    queue = run.queue or celery.conf.task_default_queue
    options: dict[str, Any] = {"queue": queue, "declare": []}
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
    # and an id never submitted is a 404 rather than Celery's eternal PENDING. One round
    # trip for the record, one for the message and its task-sent event.
    runs.queued(run_id, name, source="api", args=run.args, kwargs=run.kwargs, expires=expires_at)
    try:
        with celery.producer_or_acquire() as producer, publish_batch(producer):
            services.queues.ensure(producer, queue)
            celery.send_task(
                name,
                args=run.args,
                kwargs=run.kwargs,
                task_id=run_id,
                producer=producer,
                **options,
            )
    except KombuError as exc:
        runs.transition(
            run_id,
            "FAILURE",
            finished=time.time(),
            error_type="BrokerUnavailable",
            error=f"could not be sent: {exc}",
        )
        raise
    return run_id
