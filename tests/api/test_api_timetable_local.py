"""The window, the run limit, the exclusions and the preview in local mode, through both of
its doors: the api (which edits the YAML files) and a YAML file written straight into the
folder. The real folder source applies them, a real beat and worker run them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.preview import preview
from forwarder_worker.schedules.timing import utc_iso
from support.processes import eventually


def condition(api: httpx.Client, name: str) -> dict[str, Any]:
    body = api.get(f"/schedules/default/{name}").json()
    (ready,) = body["status"]["conditions"]
    return dict(ready)


def test_max_runs_through_the_api_fires_that_many_then_completes(api: httpx.Client) -> None:
    spec = {"task": "forwarder.ping", "schedule": {"every": "1s"}, "maxRuns": 2}
    created = api.post("/schedules", json={"metadata": {"name": "twice"}, "spec": spec})
    assert created.status_code == 201, created.text
    ready = eventually(
        lambda: (c := condition(api, "twice"))["reason"] == "Completed" and c,
        30,
        0.1,
        "twice completed",
    )
    assert ready["status"] == "True"
    assert "maxRuns 2 reached" in ready["message"]

    def runs() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = api.get("/runs", params={"schedule": "default/twice"}).json()[
            "items"
        ]
        return items

    eventually(lambda: len(runs()) == 2 and all(r["state"] == "SUCCESS" for r in runs()), 20, 0.1)
    status = api.get("/schedules/default/twice").json()["status"]
    assert status["nextRunTimes"] == []
    assert status["nextRunTime"] is None
    # Nothing more fires: two seconds are two more slots of an unbounded every-1s.
    time.sleep(2)
    assert len(runs()) == 2
    assert api.get("/schedules/default/twice/preview").json()["items"] == []
    # Run-now is a person's decision, not a slot: it runs after completion too, and the
    # schedule stays complete.
    triggered = api.post("/schedules/default/twice/trigger")
    assert triggered.status_code == 202, triggered.text
    eventually(
        lambda: api.get(f"/runs/{triggered.json()['id']}").json()["state"] == "SUCCESS", 20, 0.1
    )
    time.sleep(1.5)
    assert [r["source"] for r in runs()].count("schedule") == 2
    assert condition(api, "twice")["reason"] == "Completed"
    assert api.delete("/schedules/default/twice").status_code == 204


def test_a_yaml_file_with_exclusions_is_previewed_and_its_status_lists_the_next_five(
    stack: Any, api: httpx.Client
) -> None:
    today = datetime.now(UTC).date()
    spec = {
        "task": "forwarder.ping",
        "schedule": {"cron": "15 6 * * *"},
        "timeZone": "Europe/Helsinki",
        "endTime": (today + timedelta(days=30)).isoformat() + "T00:00:00Z",
        "exclusions": {
            "dates": [(today + timedelta(days=2)).isoformat()],
            "cron": ["* * * * 0"],
        },
    }
    document = {
        "apiVersion": "forwarder.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": "report"},
        "spec": spec,
    }
    (stack.schedules_dir / "report.yaml").write_text(yaml.safe_dump(document))
    eventually(lambda: condition(api, "report")["reason"] == "Scheduled", 30, 0.1, "applied")

    expected = [utc_iso(t) for t in preview(parse_spec(spec), 40)]
    answer = api.get("/schedules/default/report/preview", params={"count": 40})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["timeZone"] == "Europe/Helsinki"
    # The window ends in 30 days: fewer than 40 slots, none on a Sunday or the excluded day.
    assert [item["utc"] for item in body["items"]] == expected
    assert 20 < len(expected) < 30
    excluded_day = (today + timedelta(days=2)).isoformat()
    for item in body["items"]:
        local = datetime.fromisoformat(item["local"])
        assert local.strftime("%H:%M") == "06:15"
        assert local.date().isoformat() != excluded_day
        assert local.weekday() != 6
    status = api.get("/schedules/default/report").json()["status"]
    assert status["nextRunTimes"] == expected[:5]
    assert status["excludedRunCount"] == 0
    (stack.schedules_dir / "report.yaml").unlink()


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (
            {"startTime": "2030-01-02T00:00:00Z", "endTime": "2030-01-01T00:00:00Z"},
            "spec.endTime: 2030-01-01T00:00:00+00:00 is not after startTime "
            "2030-01-02T00:00:00+00:00",
        ),
        ({"maxRuns": -1}, "spec.maxRuns: Input should be greater than or equal to 1"),
        (
            {"exclusions": {"cron": ["61 * * * *"]}},
            "spec.exclusions.cron[0]: '61 * * * *' is not a valid cron expression",
        ),
        (
            {"missedRunPolicy": "Oldest"},
            "spec.missedRunPolicy: Input should be 'Latest', 'All' or 'Skip'",
        ),
        (
            {"exclusions": {"dates": ["next friday"]}},
            "spec.exclusions.dates[0]: 'next friday' is not a date like 2026-12-25",
        ),
    ],
)
def test_bad_windows_limits_and_exclusions_are_422(
    stack: Any, api: httpx.Client, extra: dict[str, Any], says: str
) -> None:
    spec = {"task": "forwarder.ping", "schedule": {"every": "1m"}, **extra}
    response = api.post("/schedules", json={"metadata": {"name": "bad"}, "spec": spec})
    assert response.status_code == 422
    assert response.json()["detail"] == says
    assert not (stack.schedules_dir / "bad.yaml").exists()


def test_preview_answers_4xx_for_bad_requests(stack: Any, api: httpx.Client) -> None:
    assert api.get("/schedules/default/nope/preview").status_code == 404
    spec = {"task": "forwarder.ping", "schedule": {"every": "1h"}}
    assert api.post("/schedules", json={"metadata": {"name": "hourly"}, "spec": spec}).is_success
    for count in ("0", "1001", "many"):
        answer = api.get("/schedules/default/hourly/preview", params={"count": count})
        assert answer.status_code == 422, count
    assert len(api.get("/schedules/default/hourly/preview").json()["items"]) == 10
    # A file edited by hand into an invalid window: the preview says why, with 422.
    document = {
        "apiVersion": "forwarder.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": "hourly"},
        "spec": {**spec, "startTime": "2030-01-02T00:00:00Z", "endTime": "2030-01-01T00:00:00Z"},
    }
    (stack.schedules_dir / "hourly.yaml").write_text(yaml.safe_dump(document))
    answer = api.get("/schedules/default/hourly/preview")
    assert answer.status_code == 422
    assert "is not after startTime" in answer.json()["detail"]
    ready = condition(api, "hourly")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.endTime" in ready["message"]
    (stack.schedules_dir / "hourly.yaml").unlink()


def test_a_yaml_file_with_a_window_fires_its_slots_only(stack: Any, api: httpx.Client) -> None:
    opens = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    closes = opens + timedelta(seconds=3)
    document = {
        "apiVersion": "forwarder.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": "campaign"},
        "spec": {
            "task": "forwarder.ping",
            "schedule": {"every": "1s"},
            # Read in timeZone: the same instants, written in Helsinki's wall time.
            "timeZone": "Europe/Helsinki",
            "startTime": opens.astimezone(ZoneInfo("Europe/Helsinki"))
            .replace(tzinfo=None)
            .isoformat(),
            "endTime": closes.isoformat(),
        },
    }
    (stack.schedules_dir / "campaign.yaml").write_text(yaml.safe_dump(document))
    ready = eventually(
        lambda: (c := condition(api, "campaign"))["reason"] == "Completed" and c,
        30,
        0.1,
        "campaign completed",
    )
    assert "no slot left before endTime" in ready["message"]

    def slots() -> list[float]:
        items = api.get("/runs", params={"schedule": "default/campaign"}).json()["items"]
        return sorted(datetime.fromisoformat(r["scheduled_at"]).timestamp() for r in items)

    assert slots() == [opens.timestamp() + k for k in range(3)]
    (stack.schedules_dir / "campaign.yaml").unlink()
