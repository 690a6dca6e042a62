"""Every spec the API server admits but the operator cannot schedule gets Ready=False with a
reason and one Warning Event, and no entry; it is not retried until its spec changes; and
valid resources keep working meanwhile.

The specs here are the ones only the operator can judge (a cron field out of range, an
unknown zone or task, an instant in the past, a zero interval): the CRD's schema and CEL rule
already refuse the rest at the API server (tests/operator/test_operator_crd_schema.py), so the
operator never sees them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support.operator_process import operator_in_thread
from support.processes import celery_beat, celery_worker, eventually, running

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PING = {"task": "forwarder.ping", "schedule": {"every": "1s"}}

# (name, spec, reason, words the message must contain)
INVALID = [
    ("bad-cron", {**PING, "schedule": {"cron": "61 * * * *"}}, "InvalidSpec", "spec.schedule.cron"),
    (
        "bad-zone",
        {**PING, "schedule": {"cron": "0 9 * * *"}, "timeZone": "Mars/Base"},
        "InvalidSpec",
        "spec.timeZone",
    ),
    ("unknown-task", {**PING, "task": "no.such.task"}, "UnknownTask", "no.such.task"),
    (
        "past-at",
        {**PING, "schedule": {"at": "2001-01-01T00:00:00Z"}},
        "InvalidSpec",
        "in the past",
    ),
    ("zero-interval", {**PING, "schedule": {"every": "0s"}}, "InvalidSpec", "minimum"),
]


def test_invalid_specs_are_reported_once_and_valid_ones_keep_working(
    kube: Any,
    namespace: str,
    operator_env: dict[str, str],
    entry_of: Any,
    logs: Path,
) -> None:
    worker = celery_worker(operator_env, logs / "worker.log")
    beat = celery_beat(operator_env, logs / "beat.log")
    with running(worker, beat), operator_in_thread(operator_env):
        kube.create("good-before", PING)
        for name, spec, _, _ in INVALID:
            kube.create(name, spec)
        kube.create("good-after", PING)

        for name, _, reason, words in INVALID:
            ready = eventually(lambda n=name: kube.ready(n), 20, message=f"{name} condition")
            assert ready["status"] == "False", (name, ready)
            assert ready["reason"] == reason, (name, ready)
            assert words in ready["message"], (name, ready)
            assert kube.status(name)["observedGeneration"] == 1
            events = eventually(lambda n=name: kube.warnings(n), 10, message=f"{name} event")
            assert events[0]["reason"] == reason
            assert words in events[0]["message"]
            assert events[0]["involvedObject"]["name"] == name
            assert entry_of(f"{namespace}/{name}") is None, name

        # Valid resources around them are scheduled and run.
        for name in ("good-before", "good-after"):
            eventually(
                lambda n=name: kube.status(n).get("lastRun", {}).get("state") == "SUCCESS", 40
            )

        # Not retried: no second event, no retry bookkeeping, while the spec stays the same.
        time.sleep(3)
        for name, _, _, _ in INVALID:
            assert len(kube.warnings(name)) == 1, name
            assert kube.events(name)[0].get("count", 1) == 1, name
        # No bookkeeping annotations either: the reconcile decides from observedGeneration.
        annotations = kube.get("bad-cron")["metadata"].get("annotations") or {}
        assert not [k for k in annotations if k.startswith("kopf.")], annotations

        # A fixed spec is picked up at once.
        kube.patch("bad-cron", {"spec": {"schedule": {"cron": "*/5 * * * *"}}})
        eventually(lambda: kube.ready("bad-cron").get("status") == "True", 20)
        assert entry_of(f"{namespace}/bad-cron")["schedule"] == {"cron": "*/5 * * * *"}
        assert kube.status("bad-cron")["observedGeneration"] == 2

        # Breaking a valid spec keeps its last valid entry scheduled, and says so.
        kube.patch("good-after", {"spec": {"schedule": {"every": "0s"}}})
        eventually(lambda: kube.ready("good-after").get("status") == "False", 20)
        assert "stays scheduled" in kube.ready("good-after")["message"]
        assert entry_of(f"{namespace}/good-after")["schedule"] == {"every": 1}
