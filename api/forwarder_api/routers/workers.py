"""``/workers``: the Celery workers as Flower sees them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from forwarder_api.deps import Authorized, FlowerDep

router = APIRouter(prefix="/workers", tags=["monitoring"], dependencies=[Authorized])


@router.get("", responses={503: {"description": "Flower is unreachable"}})
async def list_workers(flower: FlowerDep, refresh: bool = True) -> dict[str, Any]:
    """Worker name -> Flower's view of it (stats, registered tasks, active queues...).
    ``refresh=false`` answers from Flower's cache instead of asking the workers."""
    return await flower.workers(refresh)
