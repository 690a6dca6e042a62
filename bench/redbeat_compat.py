"""Stock celery-redbeat on Forwarder's Redis, as the baseline the benchmarks compare against.

Forwarder's scheduler fixes redbeat's weak points (see ``forwarder_worker.beat.scheduler``);
to show it, the benchmarks run the original ``redbeat.RedBeatScheduler`` against the same
Redis, broker, serializer, queue and workers. Only the scheduler differs. It keeps its own
key prefix, so the two never read each other's entries or lock, and its defaults (loop
interval 300 s, lock timeout 5 times the loop) unless ``BENCH_MAX_INTERVAL`` sets the loop
interval:

    FORWARDER_REDIS_URL=redis://127.0.0.1:6379/0 \\
    FORWARDER_REDBEAT_KEY_PREFIX=redbeat-bench: \\
    PYTHONPATH=bench celery -A redbeat_compat beat -S redbeat.RedBeatScheduler

:func:`add_redbeat_entry` writes entries the way redbeat's own API does. Production never
uses this module: it lives with the benchmarks, and ``celery-redbeat`` is in the ``bench``
and ``test`` extras only.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.beat import DEFAULT_MAX_INTERVAL
from celery.schedules import crontab, schedule
from forwarder_worker import Core, Settings, get_settings
from redbeat import RedBeatSchedulerEntry

DEFAULT_KEY_PREFIX = "redbeat:"


def create_redbeat_app(
    settings: Settings, *, key_prefix: str = DEFAULT_KEY_PREFIX, max_interval: float | None = None
) -> Celery:
    """A Forwarder Celery app (same broker, results and tasks) set up for stock redbeat,
    with redbeat's URL, options and prefix explicit (its fallback to the broker URL is
    deprecated) and Celery's default loop interval unless ``max_interval`` is given."""
    app = Core.from_settings(settings).app
    app.conf.update(
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=settings.effective_redis_url,
        redbeat_redis_options={},
        redbeat_key_prefix=key_prefix,
        beat_max_loop_interval=max_interval or DEFAULT_MAX_INTERVAL,
    )
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


_interval = os.environ.get("BENCH_MAX_INTERVAL")
app = create_redbeat_app(
    get_settings(),
    key_prefix=os.environ.get("FORWARDER_REDBEAT_KEY_PREFIX", DEFAULT_KEY_PREFIX),
    max_interval=float(_interval) if _interval else None,
)
