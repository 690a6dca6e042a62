"""The API's app factory: ``uvicorn --factory forwarder_api.main:create_app --port 7500``.

``create_app`` builds a fresh app from settings (the environment by default), so tests and
embedders get one app per call; the lifespan logs how it is configured and closes its
connections on shutdown.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from forwarder_worker import __version__

from forwarder_api.body_errors import install_auth_first_handlers
from forwarder_api.dashboard import install_dashboard
from forwarder_api.errors import install_error_handlers
from forwarder_api.limits import BodySizeLimit
from forwarder_api.metrics import MetricsMiddleware
from forwarder_api.routers import health, logs, metrics, monitor, runs, schedules, tasks, workers
from forwarder_api.services import Services
from forwarder_api.settings import ApiSettings, get_api_settings
from forwarder_api.stopping import on_stop_signal

log = logging.getLogger("forwarder.api")

DESCRIPTION = """Submit, inspect and cancel Forwarder task runs, manage ScheduledTasks, and
look at workers and task history. Every route but `/healthz`, `/readyz` (and `/metrics`
unless configured) needs `Authorization: Bearer <token>`. A dashboard that uses these routes
is served at [`/ui`](/ui/).

To wait for a run's outcome, as Celery's `AsyncResult.get()` does, long-poll it:
`GET /runs/{id}?wait=30` answers as soon as the run has ended (or, after 30 s, with the state
it is in), so there is no need to poll in a loop."""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """A Forwarder API app configured from ``settings``."""
    settings = settings or get_api_settings()
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not services.tokens.current():
            log.warning(
                "no API tokens configured (FORWARDER_API_TOKENS / FORWARDER_API_TOKEN_FILE): "
                "every protected route answers 401"
            )
        log.info(
            "forwarder api: redis %s, schedules %s, flower %s",
            settings.redacted_redis_url,
            settings.schedules_mode,
            settings.flower_url,
        )
        # A stop signal answers the long polls in flight, which the server waits for.
        undo = on_stop_signal(services.watch.release)
        try:
            yield
        finally:
            undo()
            await services.aclose()

    app = FastAPI(
        title="Forwarder API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry=telemetry(),
    )
    app.state.services = services
    install_error_handlers(app)
    install_auth_first_handlers(app)
    # Added last runs first: metrics see every request, 413s included.
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    for module in (health, tasks, runs, schedules, workers, monitor, logs, metrics):
        app.include_router(module.router)
    install_dashboard(app)
    return app


def telemetry() -> TelemetryConfig:
    """FastAPI's native OpenTelemetry, on only where an OpenTelemetry SDK is installed.

    It records nothing without one (the image ships none), but still looks up the global
    providers on every request, an environment read each: about 7 µs of a 200 µs poll."""
    if importlib.util.find_spec("opentelemetry.sdk") is not None:
        return {}
    return {"tracing": False, "metrics": False, "logs": False}
