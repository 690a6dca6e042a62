"""The names, patterns and constants that several components share, each spelled once.

The operator, the api, local mode and the core read and write the same resources, entries
and messages; a name or pattern written twice would drift (a namespace the api accepts that
the folder source refuses, a finalizer one side does not recognise).
"""

from __future__ import annotations

import re

# The ScheduledTask custom resource (charts/forwarder/crds/ declares it with these names).
GROUP = "forwarder.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ScheduledTask"
PLURAL = "scheduledtasks"
FINALIZER = f"{GROUP}/finalizer"
"""Held on every ScheduledTask until its entry is removed."""
RUN_NOW_ANNOTATION = f"{GROUP}/run-now"
"""The annotation whose every new value runs the task once."""
RESUME_ANNOTATION = f"{GROUP}/resume"
"""The annotation whose every new value resumes a schedule suspended after failures."""
SUSPENDED_AFTER_FAILURES = "SuspendedAfterFailures"
"""The Ready condition's reason (False) while ``suspendAfterFailures`` holds the firings."""
RUN_NOW_OVERRIDES_ANNOTATION = f"{GROUP}/run-now-overrides"
"""JSON ``{"runNow": <value>, "args": [...], "kwargs": {...}}``: the arguments of the run
that run-now value triggers (ignored for any other value)."""
BACKFILL_ANNOTATION = f"{GROUP}/backfill"
"""``"<start>/<end>"`` (RFC 3339 instants): every new value runs the schedule's slots in
that past window once each (source ``backfill``)."""
BACKFILL_MAX_SLOTS = 100
"""The most slots one backfill may run (CronJob's cap on missed runs); a longer window is
refused, not cut."""
BACKFILL_MEMORY_SLOTS = 10_000
"""The most backfilled slots remembered per schedule (the oldest go first), beside the
memory's age limit (the run records' ``result_expires``)."""

# Kubernetes' DNS-1123 rules: a namespace is a label, a resource name a subdomain.
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
NAMESPACE = re.compile(NAMESPACE_PATTERN)
NAME = re.compile(NAME_PATTERN)
ENTRY_NAME = re.compile(f"{NAMESPACE_PATTERN.removesuffix('$')}/{NAME_PATTERN.removeprefix('^')}")
"""A schedule entry's name: ``<namespace>/<name>`` of its resource (or YAML document)."""

LOCAL_UID_PREFIX = "local:"
"""Local mode's entries carry ``local:<namespace>/<name>`` as their owner's uid."""

# Forwarder's headers on a firing's Celery message, read back by the worker's receivers.
HEADER_SCHEDULE = "forwarder_schedule"
HEADER_UID = "forwarder_uid"
HEADER_SLOT = "forwarder_slot"
HEADER_RETRY = "forwarder_retry"
"""A schedule's retry policy, ``{"limit", "backoff", "maxBackoff"}`` (seconds), on its runs'
messages; every task on a Forwarder app applies it (``forwarder_worker.tasks.base``)."""
REQUEST_RECEIVED = "forwarder_received"
"""When the worker received a run (epoch seconds), set by its ``task_received`` receiver on
the request Celery hands to the pool process, whose STARTED transition records it too: the
worker's own RECEIVED write may land after the run ended (``recording.signals``)."""
TIMEOUT_GRACE_SECONDS = 5
"""A run with ``timeoutSeconds: N`` gets Celery's soft time limit at N seconds (an exception
in the task, which a retry policy retries) and its hard limit (the process killed) this many
seconds later."""

MAX_BACKOFF = 60.0
"""Longest wait (seconds) between retries while Redis or the Kubernetes API is down."""

MAX_MISSED_RUNS = 100
"""The most missed slots ``missedRunPolicy: All`` fires after an outage (CronJob's cap)."""

OVERLAP_SKIP = "concurrencyPolicy"
"""How the reason of a firing skipped by concurrencyPolicy (an overlap) begins; the run
transition counts those apart (``status.skippedRunCount``)."""

DURATION_BUCKETS = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0
)  # fmt: skip
"""Upper bounds (seconds) of the run-duration histogram (``forwarder_task_duration_seconds``):
the run transition counts each ended run into one of them, and the api reads them back."""
