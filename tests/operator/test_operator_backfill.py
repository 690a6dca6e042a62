"""Backfill from the resource itself: the annotation ``forwarder.dev/backfill:
"<start>/<end>"`` runs each slot of that past window once, on a real API server with the real
operator and a real worker. Each new value acts once and reports what it did as an Event; a
later window that overlaps runs only the slots not run yet. A bad value (not a window, in the
future, over the cap) is one Warning Event naming the mistake, and the schedule stays as it
was.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from forwarder_worker import Core
from forwarder_worker.dispatch.backfill import format_instant
from forwarder_worker.runs.records import RunRecord
from support.operator_process import operator_in_thread
from support.processes import celery_worker, eventually, running

pytestmark = [pytest.mark.cluster]

# No beat runs here, and the next minute is not due yet: every past slot is free.
SPEC = {"task": "forwarder.ping", "schedule": {"cron": "* * * * *"}}
BACKFILL = "forwarder.dev/backfill"


def window(start: float, end: float) -> str:
    return f"{format_instant(start)}/{format_instant(end)}"


def test_backfill_annotation(
    kube: Any, namespace: str, operator_env: dict[str, str], core: Core, logs: Path
) -> None:
    name = f"{namespace}/catch-up"

    def runs() -> list[RunRecord]:
        found = [r for r in core.runs.recent(schedule=name) if r.source == "backfill"]
        return sorted(found, key=lambda r: r.slot or 0)

    def events(reason: str) -> list[dict[str, Any]]:
        return [e for e in kube.events("catch-up") if e["reason"] == reason]

    worker = celery_worker(operator_env, logs / "worker.log")
    with running(worker), operator_in_thread(operator_env):
        kube.create("catch-up", SPEC)
        eventually(lambda: kube.ready("catch-up").get("reason") == "Scheduled", 30)
        now = time.time()
        minute = now - now % 60
        three = window(minute - 180, minute)
        kube.patch("catch-up", {"metadata": {"annotations": {BACKFILL: three}}})
        (event,) = eventually(lambda: events("Backfilled"), 30, 0.2, "the Backfilled event")
        assert event["type"] == "Normal"
        assert event["message"] == f"backfill {three}: 3 slots, 3 sent, 0 already run"
        done = eventually(
            lambda: len(runs()) == 3 and all(r.state == "SUCCESS" for r in runs()) and runs(),
            30,
            0.2,
            "three backfilled runs",
        )
        assert [r.slot for r in done] == [minute - 180, minute - 120, minute - 60]

        # Not a new value: nothing runs, nothing is said.
        kube.patch("catch-up", {"metadata": {"labels": {"touched": "yes"}}})
        # A wider window: only its new slot runs.
        four = window(minute - 240, minute)
        kube.patch("catch-up", {"metadata": {"annotations": {BACKFILL: four}}})
        eventually(lambda: len(events("Backfilled")) == 2, 30, 0.2, "the second event")
        messages = [e["message"] for e in events("Backfilled")]
        assert f"backfill {four}: 4 slots, 1 sent, 3 already run" in messages
        eventually(lambda: len(runs()) == 4, 30, 0.2, "the fourth run")
        assert runs()[0].slot == minute - 240

        # Bad values: one Warning each, naming the mistake; the schedule keeps running.
        bad = {
            "yesterday/today": "is not an RFC 3339 time",
            window(minute - 60, now + 3600): "ends in the future",
            window(minute - 200 * 60, minute): "more than 100 slots",
            window(minute, minute - 60): "its end must be after its start",
        }
        for value in bad:
            kube.patch("catch-up", {"metadata": {"annotations": {BACKFILL: value}}})
            eventually(
                lambda value=value: any(value in e["message"] for e in events("BackfillRefused")),
                30,
                0.2,
                f"the refusal of {value}",
            )
        for warning in events("BackfillRefused"):
            assert warning["type"] == "Warning"
        for value, says in bad.items():
            (warning,) = [e for e in events("BackfillRefused") if value in e["message"]]
            assert says in warning["message"], warning
        kube.patch("catch-up", {"metadata": {"labels": {"touched": "again"}}})
        time.sleep(1)
        assert len(events("BackfillRefused")) == len(bad)
        assert len(runs()) == 4
        assert kube.ready("catch-up").get("reason") == "Scheduled"
