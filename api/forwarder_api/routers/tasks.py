"""``/tasks``: which tasks may be submitted, and submitting a run of one."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request, Response
from pydantic import TypeAdapter
from starlette.datastructures import URL, URLPath
from starlette.types import Scope

from forwarder_api.deps import Authorized, CatalogDep, LeanRoute, services_of
from forwarder_api.models import RunRequest, Submitted, TaskList, TaskOut, json_response
from forwarder_api.routers.runs import run_path

router = APIRouter(
    prefix="/tasks", tags=["tasks"], dependencies=[Authorized], route_class=LeanRoute
)

TaskName = Annotated[str, Path(min_length=1, max_length=200)]
SUBMITTED_JSON = TypeAdapter(Submitted)


@router.get("")
def list_tasks(catalog: CatalogDep) -> TaskList:
    """The registered tasks the allow-list admits, with the workers that reported each."""
    return TaskList(
        items=[TaskOut(name=t.name, workers=list(t.workers)) for t in catalog.listing()]
    )


@router.post(
    "/{name}/runs",
    status_code=202,
    response_model=Submitted,
    responses={404: {"description": "Unknown or not allowed"}, 413: {"description": "Too big"}},
)
async def submit_run(
    name: TaskName, request: Request, body: Annotated[RunRequest | None, Body()] = None
) -> Response:
    """Queue one run of task ``name``; answers 202 with its id and URL."""
    # This is the interactive hot path: the services taken from the request rather than
    # through dependencies, the submission made on the event loop in one round trip where
    # it can (forwarder_api.submitter), and the answer serialized here.
    services = services_of(request)
    run_id = await services.submitter.submit(name, body or RunRequest())
    services.metrics.submitted.labels(name).inc()
    url = _runs_url(request.scope) + run_id
    response = json_response(
        SUBMITTED_JSON.dump_json(Submitted(id=run_id, url=url), by_alias=True), 202
    )
    response.headers["Location"] = url
    return response


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
