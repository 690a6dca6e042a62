"""Forwarder's core: what every Forwarder process (worker, beat, operator, api, local mode)
shares. It imports no Kubernetes and no HTTP-server code, so the dependency arrows point one
way: api -> core and operator -> core.

A process builds its parts once with :meth:`Core.from_settings` and takes them from there.
Importing this package builds nothing (no Celery app, no client) and patches nothing; the
entry points do: ``celery -A forwarder_worker.app`` and the ``forwarder`` command.

The sub-packages, one job each:

* :mod:`~forwarder_worker.schedules`: the spec, its timing, its entry in Redis, its status;
* :mod:`~forwarder_worker.runs`: run records and their export;
* :mod:`~forwarder_worker.dispatch`: sending runs to the workers (messages, policy, metrics);
* :mod:`~forwarder_worker.beat`: Celery Beat's scheduler;
* :mod:`~forwarder_worker.recording`: the worker's receivers and result backend;
* :mod:`~forwarder_worker.tasks`: the built-in tasks;
* :mod:`~forwarder_worker.local`: local mode and the ``forwarder`` command.

``_redis`` is private: key names, Lua scripts and clients, behind typed calls that the store
and the run log make (``lint-imports`` keeps the operator and the api out of it).
"""

from importlib.metadata import version

from forwarder_worker.core import Core
from forwarder_worker.dispatch.dispatcher import Firing, Outcome
from forwarder_worker.runs.records import RunRecord, ScheduleRuns
from forwarder_worker.schedules.model import InvalidSpec, ScheduledTaskSpec
from forwarder_worker.schedules.reconcile import ApplyResult, apply_schedule, validate
from forwarder_worker.schedules.store import Entry, StoredEntry
from forwarder_worker.settings import FlowerSettings, Settings, get_settings

# The one source of the version is pyproject.toml; the installed distribution's metadata carries
# it here, to `forwarder --version` and the API's OpenAPI document. The chart's appVersion and
# the image's label are checked against it by tests/test_release.py.
__version__ = version("forwarder")

__all__ = [
    "ApplyResult",
    "Core",
    "Entry",
    "Firing",
    "FlowerSettings",
    "InvalidSpec",
    "Outcome",
    "RunRecord",
    "ScheduleRuns",
    "ScheduledTaskSpec",
    "Settings",
    "StoredEntry",
    "__version__",
    "apply_schedule",
    "get_settings",
    "validate",
]
