"""FastAPI dependencies as ``Annotated`` aliases, so endpoints read like typed functions.

Every dependency here is ``async def`` although none of them awaits: FastAPI runs a plain
``def`` dependency in its threadpool, one thread hop per dependency per request, which cost
more than the lookups themselves. None of them blocks (the token check reads a file only
when its modification time changed).
"""

from __future__ import annotations

from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from forwarder_worker.runs.records import RunLog
from forwarder_worker.schedules.store import ScheduleStore

from forwarder_api.auth import bearer, check_token
from forwarder_api.catalog import TaskCatalog
from forwarder_api.flower import FlowerClient
from forwarder_api.metrics import ApiMetrics
from forwarder_api.schedules import ScheduleBackend
from forwarder_api.services import Services
from forwarder_api.settings import ApiSettings


def services_of(request: Request) -> Services:
    """The app's services (built by ``create_app``)."""
    services = request.app.state.services
    assert isinstance(services, Services)
    return services


async def get_services(request: Request) -> Services:
    """:func:`services_of` as a dependency."""
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def get_settings(services: ServicesDep) -> ApiSettings:
    return services.settings


async def get_celery(services: ServicesDep) -> Celery:
    return services.core.app


async def get_redis(services: ServicesDep) -> redis.Redis:
    return services.core.client


async def get_store(services: ServicesDep) -> ScheduleStore:
    return services.core.store


async def get_runs(services: ServicesDep) -> RunLog:
    return services.core.runs


async def get_catalog(services: ServicesDep) -> TaskCatalog:
    return services.catalog


async def get_schedules(services: ServicesDep) -> ScheduleBackend:
    return services.schedules


async def get_flower(services: ServicesDep) -> FlowerClient:
    return services.flower


async def get_metrics(services: ServicesDep) -> ApiMetrics:
    return services.metrics


# The token checks take the request rather than ServicesDep: every protected request runs
# one, and FastAPI solves each dependency's own dependencies on every request, cached or not.
async def require_token(request: Request, credentials: Credentials) -> None:
    """401 unless the request carries an accepted bearer token."""
    check_token(services_of(request).tokens, credentials)


async def require_metrics_token(request: Request, credentials: Credentials) -> None:
    """Like :func:`require_token`, when ``FORWARDER_API_METRICS_AUTH`` asks for it."""
    services = services_of(request)
    if services.settings.api_metrics_auth:
        check_token(services.tokens, credentials)


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
StoreDep = Annotated[ScheduleStore, Depends(get_store)]
RunLogDep = Annotated[RunLog, Depends(get_runs)]
CatalogDep = Annotated[TaskCatalog, Depends(get_catalog)]
SchedulesDep = Annotated[ScheduleBackend, Depends(get_schedules)]
FlowerDep = Annotated[FlowerClient, Depends(get_flower)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
Authorized = Depends(require_token)
MetricsAuthorized = Depends(require_metrics_token)
