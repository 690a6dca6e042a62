"""The API's settings: the core's ``FORWARDER_*`` settings plus what only the API reads.

Tokens and the Flower password are secrets: they come from env vars or mounted Secret files
and have no defaults. Everything else defaults to what ``forwarder up`` needs locally.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal

from forwarder_worker.settings import FlowerSettings, Settings, split_csv
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict


class ApiSettings(Settings, FlowerSettings):
    """Settings of the API process (``FORWARDER_`` prefix, like every component)."""

    model_config = SettingsConfigDict(env_prefix="FORWARDER_", extra="ignore")

    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Bearer tokens accepted by every protected route (``FORWARDER_API_TOKENS=a,b``)."""

    api_token_file: Path | None = None
    """A file with one token per line (a mounted Secret); re-read when it changes, so a
    rotated Secret takes effect without a restart."""

    api_tasks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Glob patterns of submittable task names. Empty: ``forwarder.*`` plus the tasks of
    ``FORWARDER_TASK_MODULES``. ``celery.*`` is never submittable, whatever the patterns."""

    api_tasks_cache_seconds: float = Field(default=10.0, ge=0)
    """How long the workers' task registry is cached (asking them takes a broadcast)."""

    api_inspect_timeout: float = Field(default=1.0, gt=0, le=30)
    """Seconds to wait for workers' replies when asking what they registered."""

    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest request body accepted; larger ones get 413."""

    api_max_header_bytes: int = Field(default=32 * 1024, ge=4096)
    """Largest request line plus headers accepted; a larger head gets 431 and a closed
    connection (uvicorn's httptools protocol has no limit of its own)."""

    api_header_timeout: float = Field(default=10.0, gt=0)
    """Seconds a client may take to send a request's line and headers (from the connection,
    or a kept-alive request's first byte); a slower one gets 408 and a closed connection."""

    api_body_timeout: float = Field(default=30.0, gt=0)
    """Seconds a client may take to send a request's body after its headers; a slower one gets
    408 and a closed connection (a full body at the limit then needs about 35 KB/s)."""

    api_show_traceback: bool = False
    """Whether ``GET /runs/{id}`` includes a failed run's traceback (it may reveal internals)."""

    api_metrics_auth: bool = False
    """Whether ``GET /metrics`` needs a bearer token like the other routes."""

    flower_timeout: float = Field(default=5.0, gt=0, le=60)
    """Seconds a Flower request may take before the route answers 503."""

    schedules_mode: Literal["kubernetes", "local"] = "local"
    """Where ``/schedules`` acts: ScheduledTask resources through the Kubernetes API, or the
    YAML files of local mode's schedules folder."""

    schedules_dir: Path | None = None
    """Local mode's schedules folder (the one the folder source watches)."""

    kubeconfig: Path | None = None
    """A kubeconfig for the Kubernetes API; unset: in-cluster config, then ``KUBECONFIG``,
    then ``~/.kube/config``."""

    kube_timeout: float = Field(default=10.0, gt=0, le=120)
    """Seconds a Kubernetes API request may take."""

    api_namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Namespaces whose ScheduledTasks ``/schedules`` serves in cluster mode
    (``FORWARDER_API_NAMESPACES=a,b``); empty serves all. The chart sets it from
    ``watchNamespaces``, where the api's RBAC is Roles in those namespaces only: listing all
    schedules then lists each of them, and other namespaces answer 403."""

    logs_dir: Path | None = None
    """Folder of component logs (``<component>.log``) in local mode; unset in a cluster, where
    components log to stdout."""

    @field_validator("api_tokens", "api_tasks", "api_namespaces", mode="before")
    @classmethod
    def _api_csv(cls, value: object) -> object:
        # Named apart from the core's validator, which a same-named method would replace.
        return split_csv(value)


@functools.cache
def get_api_settings() -> ApiSettings:
    """The process's API settings, read from the environment once."""
    return ApiSettings()
