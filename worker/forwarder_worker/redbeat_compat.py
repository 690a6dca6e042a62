"""Stock celery-redbeat on Forwarder's Redis, as the baseline that benchmarks compare against.

Forwarder's scheduler fixes redbeat's weak points (see :mod:`forwarder_worker.beat.scheduler`); to
show it, the benchmarks run the original ``redbeat.RedBeatScheduler`` against the same Redis,
broker and workers. This module configures that, under its own key prefix so the two never
read each other's entries or lock:

    FORWARDER_REDIS_URL=redis://127.0.0.1:6379/0 \\
    FORWARDER_REDBEAT_KEY_PREFIX=redbeat-bench: \\
    celery -A forwarder_worker.redbeat_compat beat -S redbeat.RedBeatScheduler

and :func:`add_redbeat_entry` writes entries the way redbeat's own API does. Production never
uses this module.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.schedules import crontab, schedule
from redbeat import RedBeatSchedulerEntry

from forwarder_worker.app import create_app
from forwarder_worker.settings import Settings, get_settings

DEFAULT_KEY_PREFIX = "redbeat:"


def create_redbeat_app(
    settings: Settings | None = None,
    *,
    key_prefix: str | None = None,
    lock_timeout: float | None = None,
) -> Celery:
    """A Forwarder Celery app (same broker, results and tasks) set up for stock redbeat.

    ``key_prefix`` defaults to ``FORWARDER_REDBEAT_KEY_PREFIX`` or ``redbeat:``;
    ``lock_timeout`` to redbeat's own default (5 times the loop interval).
    """
    settings = settings or get_settings()
    app = create_app(settings)
    app.conf.update(
        beat_scheduler="redbeat.RedBeatScheduler",
        # Set explicitly: redbeat's fallback to broker_url is deprecated.
        redbeat_redis_url=settings.effective_redis_url,
        redbeat_redis_options={},
        redbeat_key_prefix=key_prefix
        or os.environ.get("FORWARDER_REDBEAT_KEY_PREFIX", DEFAULT_KEY_PREFIX),
    )
    if lock_timeout is not None:
        app.conf.redbeat_lock_timeout = lock_timeout
    return app


def add_redbeat_entry(
    app: Celery,
    name: str,
    task: str,
    *,
    every: float | None = None,
    cron: str | None = None,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> RedBeatSchedulerEntry:
    """Save one redbeat entry (``every`` seconds or a 5-field UTC ``cron``) and return it."""
    if (every is None) == (cron is None):
        raise ValueError(f"redbeat entry {name!r}: give exactly one of every or cron")
    when: schedule
    if every is not None:
        when = schedule(run_every=timedelta(seconds=every), app=app)
    else:
        assert cron is not None
        minute, hour, day, month, weekday = cron.split()
        when = crontab(minute, hour, weekday, day, month, app=app)
    entry = RedBeatSchedulerEntry(name, task, when, args=args or [], kwargs=kwargs or {}, app=app)
    entry.save()
    return entry


app = create_redbeat_app()
