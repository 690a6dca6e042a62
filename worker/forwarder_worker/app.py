"""The Celery app every Forwarder process uses: JSON only, late acks, events and limits.

``celery -A forwarder_worker.app worker|beat|flower`` finds the module-level ``app``, built
from the environment. Tests and embedders call :func:`create_app` with their own Settings.
"""

from __future__ import annotations

from celery import Celery

from forwarder_worker import broker_fixes
from forwarder_worker._redis.clients import ssl_options
from forwarder_worker.recording import signals  # noqa: F401  (connects the run-record receivers)
from forwarder_worker.settings import Settings, get_settings

BUILTIN_TASK_MODULES = (
    "forwarder_worker.tasks.ping",
    "forwarder_worker.tasks.http",
    "forwarder_worker.tasks.history",
)


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from ``settings`` (the environment by default)."""
    settings = settings or get_settings()
    broker_fixes.install()
    url = settings.effective_redis_url
    # Celery's "<backend class>+<url>" form: its Redis backend, recording SUCCESS with the
    # result (see forwarder_worker.recording.result_backend).
    backend = "forwarder_worker.recording.result_backend:RecordingRedisBackend"
    app = Celery("forwarder", broker=url, backend=f"{backend}+{url}", set_as_current=False)
    app.forwarder_settings = settings
    tls = ssl_options(settings)
    app.conf.update(
        # JSON only: a pickled message is refused, never executed.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A task is acknowledged after it ran, and redelivered if its worker died mid-run.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Flower needs events; "started" lets clients tell queued from running.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        result_extended=True,
        result_expires=settings.result_expires,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=min(settings.task_soft_time_limit, settings.task_time_limit),
        task_default_queue="default",
        task_create_missing_queues=True,
        # A message unacked for longer than this is redelivered, so it must outlast any run.
        broker_transport_options={
            "visibility_timeout": settings.task_time_limit * 2 + 60,
            "global_keyprefix": settings.key_prefix,
        },
        result_backend_transport_options={"global_keyprefix": settings.key_prefix},
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        beat_scheduler="forwarder_worker.beat.scheduler:ForwarderScheduler",
        beat_max_loop_interval=settings.beat_max_loop_interval,
        include=[*BUILTIN_TASK_MODULES, *settings.task_modules],
    )
    if tls is not None:
        app.conf.broker_use_ssl = tls
        app.conf.redis_backend_use_ssl = tls
    return app


def registered_task_names(app: Celery) -> set[str]:
    """Names of the tasks this app's modules register, Celery's internal ones excluded."""
    app.loader.import_default_modules()
    return {name for name in app.tasks if not name.startswith("celery.")}


app = create_app()
