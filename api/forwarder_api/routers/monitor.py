"""``/monitor``: Flower's task history, formatted as the original tutorial did."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from forwarder_api.deps import Authorized, FlowerDep
from forwarder_api.flower import format_tasks

router = APIRouter(prefix="/monitor", tags=["monitoring"], dependencies=[Authorized])


@router.get("/tasks", responses={503: {"description": "Flower is unreachable"}})
async def monitor_tasks(
    flower: FlowerDep,
    limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
    state: Annotated[str | None, Query(pattern=r"^[A-Z]{1,20}$")] = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Short task name -> ``"<n>/<uuid>"`` -> worker, children, state, received, started,
    succeeded, failed, result, timestamp, runtime; numbered by received time."""
    return format_tasks(await flower.tasks(limit=limit, state=state))
