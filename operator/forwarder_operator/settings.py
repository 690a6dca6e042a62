"""The operator's settings: the shared ``FORWARDER_*`` ones plus what only the operator needs."""

from __future__ import annotations

from typing import Annotated

from forwarder_worker.settings import Settings
from pydantic import Field, field_validator
from pydantic_settings import NoDecode


class OperatorSettings(Settings):
    """Settings of ``forwarder operator`` / ``kopf run -m forwarder_operator``."""

    operator_namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Namespaces to watch (``FORWARDER_OPERATOR_NAMESPACES=a,b``); empty watches all of them."""

    operator_sweep_interval: float = Field(default=60.0, gt=0)
    """Seconds between sweeps that remove orphan entries and re-create lost ones. A Redis that
    lost its data is repaired within this time."""

    operator_status_interval: float = Field(default=1.0, gt=0)
    """Seconds between passes of the status loop, which copies changed run records into the
    resources' status. Lower is fresher; each pass touches only changed schedules."""

    operator_check_tasks: bool = True
    """Reject specs whose task is not registered in this process (reason UnknownTask). The
    operator imports ``task_modules`` like a worker does; turn off if it cannot."""

    operator_liveness: str | None = None
    """kopf's liveness endpoint, e.g. ``http://0.0.0.0:8080/healthz``; off when unset."""

    operator_peering: str | None = None
    """kopf peering object name. Unset runs standalone (one replica, Recreate strategy)."""

    operator_priority: int = 0
    """This replica's peering priority: the highest live one handles resources."""

    operator_workers: int = Field(default=8, ge=1, le=256)
    """Threads that run the (synchronous, Redis-bound) handlers."""

    @field_validator("operator_namespaces", mode="before")
    @classmethod
    def _namespaces_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def watches(self, namespace: str) -> bool:
        """Whether ``namespace`` is one this operator is responsible for."""
        return not self.operator_namespaces or namespace in self.operator_namespaces
