"""The window, the run limit and the exclusions from a resource on the real control plane,
with the real operator, beat and worker: a window fires its own slots only and a maxRuns
schedule that many times, then each one's Ready condition turns Completed; status.nextRunTimes lists the next 5 fire times without the
excluded ones, as the core's preview does; and a spec the apiserver admits but the model
refuses (an exclusion cron out of range) gets Ready=False and a Warning Event. What the
apiserver itself refuses (an endTime before startTime, a negative maxRuns) is in
test_operator_crd_schema.py's table.
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from forwarder_worker import Core
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.preview import preview
from forwarder_worker.schedules.timing import utc_iso
from forwarder_worker.settings import Settings
from support.operator_process import operator_in_thread
from support.processes import celery_beat, celery_worker, eventually, running

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_window_and_max_runs_complete_and_next_run_times_skip_exclusions(
    kube: Any,
    namespace: str,
    operator_env: dict[str, str],
    entry_of: Any,
    logs: Path,
    redis_url: str,
) -> None:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    excluded_spec = {
        "task": "forwarder.ping",
        "schedule": {"cron": "0 12 * * *"},
        "exclusions": {"dates": [tomorrow], "cron": ["* * * * 6,0"]},
    }
    worker = celery_worker(operator_env, logs / "worker.log")
    beat = celery_beat(operator_env, logs / "beat.log")
    with running(worker, beat), operator_in_thread(operator_env):
        kube.create(
            "limited", {"task": "forwarder.ping", "schedule": {"every": "1s"}, "maxRuns": 3}
        )
        # A window that opens in about 3 s and closes 3 s later.
        opens = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
        closes = opens + timedelta(seconds=3)
        window = {"startTime": iso(opens), "endTime": iso(closes)}
        kube.create("windowed", {"task": "forwarder.ping", "schedule": {"every": "1s"}, **window})
        kube.create("holidays", excluded_spec)
        kube.create(
            "catch-up",
            {"task": "forwarder.ping", "schedule": {"cron": "0 * * * *"}, "missedRunPolicy": "All"},
        )
        kube.create(
            "bad-exclusion",
            {**excluded_spec, "exclusions": {"cron": ["0 9 * * *", "61 * * * *"]}},
        )

        # maxRuns 3: three runs, then Completed, with no next run; nothing fires again.
        ready = eventually(
            lambda: (r := kube.ready("limited")).get("reason") == "Completed" and r,
            40,
            message="limited completed",
        )
        assert ready["status"] == "True"
        assert "maxRuns 3 reached" in ready["message"]
        status = eventually(
            lambda: (s := kube.status("limited")).get("totalRunCount") == 3 and s,
            30,
            message="three runs in status",
        )
        assert status.get("nextRunTime") is None
        assert not status.get("nextRunTimes")
        time.sleep(2.5)
        assert kube.status("limited")["totalRunCount"] == 3
        assert (entry_of(f"{namespace}/limited") or {}).get("max_runs") == 3

        # The window: its three slots, then Completed; none before it opened.
        ready = eventually(
            lambda: (r := kube.ready("windowed")).get("reason") == "Completed" and r,
            40,
            message="windowed completed",
        )
        assert f"no slot left before endTime {iso(closes)}" in ready["message"]
        core = Core.from_settings(Settings(redis_url=redis_url))
        runs = core.runs.recent(schedule=f"{namespace}/windowed", limit=100)
        core.close()
        fired = sorted((r for r in runs if r.state != "SKIPPED"), key=lambda r: r.slot or 0)
        assert [r.slot for r in fired] == [opens.timestamp() + k for k in range(3)]
        assert all(r.created is not None and r.created >= opens.timestamp() for r in fired)

        # nextRunTimes: the next 5, none of them on the excluded day or a weekend.
        times = eventually(
            lambda: kube.status("holidays").get("nextRunTimes"), 20, message="nextRunTimes"
        )
        assert len(times) == 5
        expected = [utc_iso(t) for t in preview(parse_spec(excluded_spec), 5)]
        assert times == expected
        for text in times:
            day = datetime.fromisoformat(text.replace("Z", "+00:00"))
            assert day.date().isoformat() != tomorrow
            assert day.weekday() < 5
        assert kube.status("holidays")["nextRunTime"] == times[0]

        # missedRunPolicy reaches the entry beat fires (the CRD defaults it to Latest).
        entry = eventually(lambda: entry_of(f"{namespace}/catch-up"), 20, message="catch-up")
        assert entry["missed_policy"] == "All"
        assert (entry_of(f"{namespace}/holidays") or {}).get("missed_policy") == "Latest"
        assert kube.get("holidays")["spec"]["missedRunPolicy"] == "Latest"
        assert kube.status("catch-up")["missedRunCount"] == 0

        # An exclusion cron the apiserver admits and the model refuses.
        ready = eventually(lambda: kube.ready("bad-exclusion"), 20, message="bad condition")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        assert "spec.exclusions.cron[1]: '61 * * * *' is not a valid cron" in ready["message"]
        (event,) = eventually(lambda: kube.warnings("bad-exclusion"), 10, message="event")
        assert event["reason"] == "InvalidSpec"
        assert "spec.exclusions.cron[1]" in event["message"]
        assert entry_of(f"{namespace}/bad-exclusion") is None


def test_missed_run_policies_after_a_real_beat_outage(
    kube: Any, namespace: str, operator_env: dict[str, str], redis_url: str, logs: Path
) -> None:
    """Latest and All from resources, across a real outage of the only beat: Latest fires
    the latest missed slot and counts the rest missed; All fires every one of them."""
    core = Core.from_settings(Settings(redis_url=redis_url))
    names = {policy: f"outage-{policy.lower()}" for policy in ("Latest", "All")}
    worker = celery_worker(operator_env, logs / "worker.log")
    first = celery_beat(operator_env, logs / "beat-1.log", "beat-1")
    with running(worker), operator_in_thread(operator_env):
        with running(first):
            for policy, name in names.items():
                spec = {"task": "forwarder.ping", "schedule": {"every": "1s"}}
                kube.create(name, {**spec, "missedRunPolicy": policy})
            for name in names.values():
                eventually(lambda n=name: kube.status(n).get("totalRunCount", 0) >= 2, 40)
        first.stop()
        stopped = time.time()
        time.sleep(4)  # about four slots of each pass with no beat
        second = celery_beat(operator_env, logs / "beat-2.log", "beat-2")
        with running(second):

            def slots(name: str) -> list[float]:
                runs = core.runs.recent(schedule=f"{namespace}/{name}", limit=1000)
                return sorted(r.slot for r in runs if r.state != "SKIPPED" and r.slot)

            for name in names.values():
                eventually(
                    lambda n=name: len([s for s in slots(n) if s > stopped + 6]) >= 2,
                    40,
                    0.2,
                    f"{name} fires again",
                )
            latest = slots(names["Latest"])
            gaps = [b - a for a, b in itertools.pairwise(latest)]
            assert max(gaps) >= 3, latest  # the outage: only its latest slot fired
            every = slots(names["All"])
            assert all(b - a == 1 for a, b in itertools.pairwise(every)), every  # none lost
            assert len(every) == len(set(every))
            missed = eventually(
                lambda: (
                    kube.status(names["Latest"]).get("missedRunCount", 0) >= 3
                    and kube.status(names["Latest"])
                ),
                20,
                message="missedRunCount",
            )["missedRunCount"]
            assert missed >= int(max(gaps)) - 1
            assert kube.status(names["All"])["missedRunCount"] == 0
    core.close()
