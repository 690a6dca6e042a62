"""Retries per schedule from a resource on the real API server: the CRD admits
``retries``/``timeoutSeconds`` and refuses a negative limit itself; the real operator puts
the policy on the entry, and a run that fails once is retried by a real worker, its two
attempts on the run record and its success in status.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from forwarder_worker import Core
from support.operator_process import operator_in_thread
from support.processes import celery_worker, eventually, running

pytestmark = [pytest.mark.cluster]

SPEC = {
    "task": "tests.fail_first",
    "kwargs": {"failures": 1},
    "schedule": {"cron": "0 0 1 1 *"},
    "retries": {"limit": 2, "backoff": "1s"},
    "timeoutSeconds": 30,
}


def test_the_crd_refuses_a_negative_retry_limit(kube: Any) -> None:
    for retries, words in (
        ({"limit": -1}, "spec.retries.limit"),
        ({"backoff": "1s"}, "spec.retries.limit"),  # required
        ({"limit": 1, "backoff": "soon"}, "spec.retries.backoff"),
    ):
        reply = kube.post("refused", {**SPEC, "retries": retries})
        assert reply.status_code == 422, reply.text
        assert words in reply.json()["message"], reply.text
    reply = kube.post("refused", {**SPEC, "timeoutSeconds": 0})
    assert reply.status_code == 422 and "spec.timeoutSeconds" in reply.json()["message"]
    assert kube.get("refused") is None


def test_a_resource_s_runs_are_retried(
    kube: Any,
    namespace: str,
    operator_env: dict[str, str],
    entry_of: Any,
    core: Core,
    logs: Path,
) -> None:
    worker = celery_worker(operator_env, logs / "worker.log")
    with running(worker), operator_in_thread(operator_env):
        kube.create("retried", SPEC, annotations={"forwarder.dev/run-now": "go"})
        entry = eventually(lambda: entry_of(f"{namespace}/retried"), 30, message="entry")
        assert entry["retries"] == {"limit": 2, "backoff": 1, "maxBackoff": 360}
        assert entry["timeout"] == 30
        last = eventually(
            lambda: (
                kube.status("retried").get("lastRun", {}).get("state") == "SUCCESS"
                and kube.status("retried")["lastRun"]
            ),
            40,
            message="the retried run's success in status",
        )
        record = core.runs.get(last["taskId"])
        assert record is not None and record.retries == 1
        attempts = json.loads(record.attempts or "[]")
        assert [(a["attempt"], a["state"]) for a in attempts] == [(1, "RETRY"), (2, "SUCCESS")]
        assert attempts[0]["error"] == "ValueError: attempt 1 failed"


def test_what_only_the_operator_can_tell_is_ready_false_with_an_event(
    kube: Any, namespace: str, operator_env: dict[str, str], entry_of: Any
) -> None:
    # The CRD cannot compare two durations: the operator reports it, and makes no entry.
    spec = {**SPEC, "retries": {"limit": 1, "backoff": "1m", "maxBackoff": "5s"}}
    with operator_in_thread(operator_env):
        kube.create("inverted", spec)
        ready = eventually(lambda: kube.ready("inverted"), 20, message="the condition")
        assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
        message = "spec.retries: maxBackoff (5s) is below backoff (60s)"
        assert ready["message"] == message
        (event,) = eventually(lambda: kube.warnings("inverted"), 10, message="the event")
        assert event["reason"] == "InvalidSpec" and event["message"] == message
        assert entry_of(f"{namespace}/inverted") is None
