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
RUN_NOW_OVERRIDES_ANNOTATION = f"{GROUP}/run-now-overrides"
"""JSON ``{"runNow": <value>, "args": [...], "kwargs": {...}}``: the arguments of the run
that run-now value triggers (ignored for any other value)."""

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

MAX_BACKOFF = 60.0
"""Longest wait (seconds) between retries while Redis or the Kubernetes API is down."""
