"""Forwarder's core: settings, the Celery app, schedules, their store, run records and tasks.

Every Forwarder process (worker, beat, operator, api, local mode) shares this package. It
imports no Kubernetes and no HTTP-server code, so the worker image stays small and the
dependency arrows point one way: api -> worker and operator -> worker.
"""

__version__ = "0.1.0"
