"""Flower's REST API as the monitoring backend, and the tutorial's task formatting.

``/workers`` and ``/monitor/tasks`` ask Flower (always behind basic auth) rather than the
workers, because Flower keeps the event history the workers do not. A Flower that is down
or rejects our credentials is reported as 503 or 502 with a message, never as a 500.
"""

from __future__ import annotations

from typing import Any

import httpx2

from forwarder_api.errors import BadGateway, Unavailable
from forwarder_api.settings import ApiSettings

# The fields the original tutorial keeps for each task (flower_format_tasks).
RELEVANT_KEYS = (
    "worker",
    "children",
    "state",
    "received",
    "started",
    "succeeded",
    "failed",
    "result",
    "timestamp",
    "runtime",
)


def format_tasks(tasks: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Group Flower's tasks as the tutorial did: short task name -> ``"<n>/<uuid>"`` -> the
    relevant fields, numbered in order of received time (never-received tasks first)."""

    def received(info: dict[str, Any]) -> float:
        value = info.get("received")
        return float(value) if value is not None else float("-inf")

    formatted: dict[str, dict[str, dict[str, Any]]] = {}
    for info in sorted(tasks.values(), key=received):
        if info.get("name") is None:
            continue
        short = str(info["name"]).split(".")[-1].replace("_", "-")
        group = formatted.setdefault(short, {})
        group[f"{len(group) + 1}/{info['uuid']}"] = {
            key: value for key, value in info.items() if key in RELEVANT_KEYS
        }
    return formatted


class FlowerClient:
    """An async client of Flower's ``/api`` with basic auth."""

    def __init__(self, settings: ApiSettings) -> None:
        self.base_url = settings.flower_url.rstrip("/")
        self.client = httpx2.AsyncClient(
            base_url=self.base_url,
            auth=settings.flower_auth(),
            timeout=settings.flower_timeout,
        )

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET ``/api/<path>`` and return its JSON, or raise 503/502 with a reason."""
        try:
            response = await self.client.get(f"/api/{path}", params=params)
        except httpx2.HTTPError as exc:
            raise Unavailable(
                f"Flower is unreachable at {self.base_url}: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code == 401:
            raise BadGateway(
                "Flower rejected the configured credentials "
                "(FORWARDER_FLOWER_USER / FORWARDER_FLOWER_PASSWORD)"
            )
        if response.status_code != 200:
            raise BadGateway(f"Flower answered {response.status_code} for /api/{path}")
        try:
            return response.json()
        except ValueError:
            raise BadGateway(f"Flower sent a response that is not JSON for /api/{path}") from None

    async def workers(self, refresh: bool = True) -> dict[str, Any]:
        """Flower's ``/api/workers``: worker name -> stats, registered tasks, queues...
        ``refresh`` makes Flower ask the workers now instead of answering from its cache."""
        data = await self.get("workers", {"refresh": "1"} if refresh else None)
        return data if isinstance(data, dict) else {}

    async def tasks(self, limit: int | None = None, state: str | None = None) -> dict[str, Any]:
        """Flower's ``/api/tasks``: uuid -> task info."""
        params: dict[str, Any] = {}
        if limit is not None:
            params["limit"] = limit
        if state is not None:
            params["state"] = state
        data = await self.get("tasks", params)
        return data if isinstance(data, dict) else {}

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()
