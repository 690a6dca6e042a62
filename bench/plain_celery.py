"""A plain Celery app with a Forwarder worker's settings: the anchor of the worker throughput
benchmark (bench/worker_throughput.py).

``celery -A plain_celery worker`` with ``BENCH_PLAIN_CONF`` (a JSON object of Celery settings,
copied by the benchmark from a Forwarder app: serializers, late acks, prefetch, task events,
time limits, transport options...) and ``FORWARDER_REDIS_URL`` (broker and result backend,
Celery's own Redis backend). No Forwarder code is imported: what the worker does per task is
stock Celery's, and the bench tasks' body (``bench_tasks``).
"""

from __future__ import annotations

import json
import os

from celery import Celery

_url = os.environ["FORWARDER_REDIS_URL"]
app = Celery("plain", broker=_url, backend=_url, include=["bench_tasks"])
app.conf.update(json.loads(os.environ["BENCH_PLAIN_CONF"]))
