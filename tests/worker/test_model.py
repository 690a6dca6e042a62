"""Every validation message of the ScheduledTask spec model names the field and the problem."""

from __future__ import annotations

import time

import pytest
from forwarder_worker.schedules.model import InvalidSpec, parse_duration, parse_spec

NOW = time.time()


def spec(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {"task": "forwarder.ping", "schedule": {"every": "30s"}}
    base.update(fields)
    return base


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            spec(schedule={"cron": "61 * * * *"}),
            "spec.schedule.cron: '61 * * * *' is not a valid cron expression",
        ),
        (
            spec(schedule={"cron": "* * * *"}),
            "spec.schedule.cron: '* * * *' is not a 5-field cron expression",
        ),
        (spec(schedule={"cron": "@reboot"}), "spec.schedule.cron: '@reboot' is not a cron alias"),
        (spec(schedule={"cron": "0 0 30 2 *"}), "spec.schedule.cron: '0 0 30 2 *' never fires"),
        (
            spec(timeZone="Mars/Olympus_Mons"),
            "spec.timeZone: 'Mars/Olympus_Mons' is not a known IANA time zone",
        ),
        (
            spec(schedule={"every": "0s"}),
            "spec.schedule.every: interval '0s' is below the minimum of 1s",
        ),
        (spec(schedule={"every": 0}), "spec.schedule.every: interval 0 is below the minimum of 1s"),
        (spec(schedule={"every": "ten"}), "spec.schedule.every: 'ten' is not a duration"),
        (
            spec(schedule={"every": "1s", "cron": "* * * * *"}),
            "spec.schedule: exactly one of every, cron or at is required (every and cron are both set)",
        ),
        (
            spec(schedule={}),
            "spec.schedule: exactly one of every, cron or at is required (none is set)",
        ),
        (
            spec(schedule={"at": "2001-01-01T00:00:00Z"}),
            "spec.schedule.at: 2001-01-01T00:00:00+00:00 is in the past",
        ),
        (spec(priority=10), "spec.priority: Input should be less than or equal to 9"),
        (spec(priority=-1), "spec.priority: Input should be greater than or equal to 0"),
        (spec(jitterSeconds=-5), "spec.jitterSeconds: Input should be greater than or equal to 0"),
        (
            spec(jitterSeconds=7200),
            "spec.jitterSeconds: Input should be less than or equal to 3600",
        ),
        (
            spec(concurrencyPolicy="Sometimes"),
            "spec.concurrencyPolicy: Input should be 'Allow', 'Forbid' or 'Replace'",
        ),
        (
            spec(startingDeadlineSeconds=0),
            "spec.startingDeadlineSeconds: Input should be greater than or equal to 1",
        ),
        (
            spec(runHistoryLimit=0),
            "spec.runHistoryLimit: Input should be greater than or equal to 1",
        ),
        (spec(suspended=True), "spec.suspended: is not a known field"),
        ({"schedule": {"every": 5}}, "spec.task: Field required"),
        (spec(task="has spaces"), "spec.task: String should match pattern"),
        (spec(args={"not": "a list"}), "spec.args: Input should be a valid list"),
        ("just a string", "spec: must be a mapping, not str"),
        (spec(suspend="yes"), "spec.suspend: Input should be a valid boolean"),
    ],
)
def test_invalid_spec_message_names_field_and_problem(raw: object, message: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(raw, now=NOW)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_several_problems_are_all_named() -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(spec(priority=12, timeZone="Nowhere/Land"), now=NOW)
    assert "spec.priority" in str(caught.value)
    assert "spec.timeZone" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("2d", 172800), (45, 45), ("45", 45)],
)
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


def test_valid_spec_reads_camel_case_fields() -> None:
    parsed = parse_spec(
        spec(
            schedule={"cron": "*/5 * * * *"},
            timeZone="Europe/Helsinki",
            startingDeadlineSeconds=30,
            concurrencyPolicy="Forbid",
            jitterSeconds=3,
            priority=5,
            runHistoryLimit=20,
            queue="reports",
        ),
        now=NOW,
    )
    assert parsed.time_zone == "Europe/Helsinki"
    assert parsed.starting_deadline_seconds == 30
    assert parsed.concurrency_policy == "Forbid"
    assert parsed.schedule.describe() == "cron */5 * * * *"
    assert parsed.queue == "reports"


def test_a_past_at_is_accepted_when_rereading_a_created_one_off() -> None:
    raw = spec(schedule={"at": "2001-01-01T00:00:00Z"})
    assert parse_spec(raw, now=NOW, allow_past_at=True).schedule.at is not None


def test_a_naive_at_is_read_in_the_spec_time_zone() -> None:
    parsed = parse_spec(
        spec(schedule={"at": "2099-06-01T12:00:00"}, timeZone="Europe/Helsinki"), now=NOW
    )
    assert parsed.schedule.at is not None
    assert parsed.schedule.at.utcoffset() is not None
    assert parsed.schedule.at.isoformat() == "2099-06-01T12:00:00+03:00"
