"""Run-now with other arguments from the resource itself: the annotation
``forwarder.dev/run-now-overrides`` (``{"runNow": <value>, "args": [...], "kwargs": {...}}``)
gives the run of that run-now value its arguments, on a real API server with the real
operator and a real worker. Overrides written for another value are ignored; malformed ones
refuse that value's run, with a Warning Event, once.
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
    "task": "forwarder.ping",
    "args": ["spec"],
    "kwargs": {"source": "spec", "keep": 1},
    "schedule": {"cron": "0 0 1 1 *"},
}
RUN_NOW = "forwarder.dev/run-now"
OVERRIDES = "forwarder.dev/run-now-overrides"


def test_run_now_overrides_annotation(
    kube: Any, namespace: str, operator_env: dict[str, str], core: Core, logs: Path
) -> None:
    name = f"{namespace}/manual"

    def runs() -> list[Any]:
        return [r for r in core.runs.recent(schedule=name) if r.state == "SUCCESS"]

    worker = celery_worker(operator_env, logs / "worker.log")
    with running(worker), operator_in_thread(operator_env):
        kube.create("manual", SPEC)
        eventually(lambda: kube.ready("manual").get("reason") == "Scheduled", 30)

        asked = {"runNow": "one", "args": ["asked"], "kwargs": {"source": "annotation"}}
        kube.patch(
            "manual",
            {"metadata": {"annotations": {RUN_NOW: "one", OVERRIDES: json.dumps(asked)}}},
        )
        (run,) = eventually(runs, 30, 0.2, "the overridden run")
        result = json.loads(run.result)
        assert result["args"] == ["asked"]
        assert result["kwargs"] == {"source": "annotation", "keep": 1}
        assert json.loads(run.overrides) == {"args": ["asked"], "kwargs": {"source": "annotation"}}
        assert run.source == "trigger"

        # A new value with the old overrides still there: they were for "one", not "two".
        kube.patch("manual", {"metadata": {"annotations": {RUN_NOW: "two"}}})
        second = eventually(lambda: len(runs()) == 2 and runs()[0], 30, 0.2, "the plain run")
        assert json.loads(second.result)["args"] == ["spec"] and second.overrides is None

        # Malformed overrides for a new value: that value does not run, one Warning says why.
        kube.patch(
            "manual",
            {"metadata": {"annotations": {RUN_NOW: "three", OVERRIDES: '{"runNow": "three", '}}},
        )
        warning = eventually(
            lambda: [w for w in kube.warnings("manual") if w["reason"] == "RunNowFailed"],
            30,
            0.2,
            "the RunNowFailed event",
        )
        assert "is not JSON" in warning[0]["message"] and "'three'" in warning[0]["message"]
        wrong = {"runNow": "four", "args": {"a": 1}}
        kube.patch(
            "manual",
            {"metadata": {"annotations": {RUN_NOW: "four", OVERRIDES: json.dumps(wrong)}}},
        )
        eventually(
            lambda: any(
                "args must be a JSON array" in w["message"] for w in kube.warnings("manual")
            ),
            30,
            0.2,
            "the second RunNowFailed event",
        )
        kube.patch("manual", {"metadata": {"labels": {"touched": "yes"}}})  # not a new value
        assert len(runs()) == 2
        assert len([w for w in kube.warnings("manual") if w["reason"] == "RunNowFailed"]) == 2
