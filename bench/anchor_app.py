"""The anchor's Celery app: Forwarder's app configuration with stock celery-redbeat settings.

Only the scheduler differs from Forwarder's stack: the same Redis, serializer, queue and
worker run what redbeat sends. redbeat keeps its own key prefix and its defaults (loop
interval 300 s, lock timeout 5 x loop) unless ``BENCH_MAX_INTERVAL`` sets the loop interval.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.beat import DEFAULT_MAX_INTERVAL
from forwarder_worker.app import create_app
from forwarder_worker.settings import Settings, get_settings


def create_anchor_app(settings: Settings, max_interval: float | None = None) -> Celery:
    """Forwarder's app with redbeat configured explicitly (its URL, options and prefix)."""
    app = create_app(settings)
    app.conf.update(
        redbeat_redis_url=settings.effective_redis_url,
        redbeat_redis_options={},
        redbeat_key_prefix="redbeat:",
        beat_max_loop_interval=max_interval or DEFAULT_MAX_INTERVAL,
    )
    return app


_interval = os.environ.get("BENCH_MAX_INTERVAL")
app = create_anchor_app(get_settings(), float(_interval) if _interval else None)
