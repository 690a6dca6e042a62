"""``/healthz`` (the process answers) and ``/readyz`` (Redis answers); both open, for probes."""

from __future__ import annotations

from fastapi import APIRouter

from forwarder_api.deps import RedisDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis is unreachable"}})
def readyz(client: RedisDep) -> dict[str, str]:
    """Readiness: Redis answers a PING (a Redis error becomes 503 with its message)."""
    client.ping()
    return {"status": "ready"}
