"""The ScheduledTask CRD on a real kube-apiserver: accepted as it is (structural schema, CEL
within its cost limits), every sample accepted, the printer columns and ``kubectl explain``
served, and the bad-resource table refused by the apiserver itself, with its own message and
a non-zero kubectl exit.

The operator validates again with the core's model, for what no schema can say (an unknown
task, a past ``at``, a cron value out of range, an unknown zone) and for clusters without CEL,
so the table also says which mistakes only the operator catches, and checks that it catches
every one of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from forwarder_worker import Core
from forwarder_worker.schedules.model import InvalidSpec
from forwarder_worker.schedules.reconcile import validate
from forwarder_worker.settings import Settings
from support.controlplane import ControlPlane

pytestmark = pytest.mark.cluster

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
CRD_PATH = MANIFESTS / "crds" / "forwarder.dev_scheduledtasks.yaml"
SAMPLES = sorted((MANIFESTS / "samples").glob("*.yaml"))
# The built-in tasks, as the operator sees them (samples use nothing else).
KNOWN_TASKS = Core.from_settings(Settings()).registered_task_names()


def document(name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "forwarder.dev/v1alpha1",
            "kind": "ScheduledTask",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def test_the_crds_are_accepted_and_established(crds: ControlPlane) -> None:
    again = crds.kubectl("apply", "-f", str(MANIFESTS / "crds"))
    assert "scheduledtasks.forwarder.dev unchanged" in again.stdout
    definition = json.loads(
        crds.kubectl("get", "crd", "scheduledtasks.forwarder.dev", "-o", "json").stdout
    )
    conditions = {c["type"]: c["status"] for c in definition["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    # A schema the apiserver cannot prune or default by would show up here.
    assert "NonStructuralSchema" not in conditions
    assert definition["status"]["acceptedNames"]["shortNames"] == ["st", "stask"]
    assert definition["status"]["acceptedNames"]["categories"] == ["forwarder"]
    resources = crds.kubectl("api-resources", "--api-group=forwarder.dev", "-o", "wide").stdout
    (row,) = [line for line in resources.splitlines() if line.startswith("scheduledtasks")]
    assert "st,stask" in row
    assert "forwarder.dev/v1alpha1" in row
    assert "true" in row.split()  # namespaced


def test_every_sample_is_accepted_and_valid_for_the_operator(
    crds: ControlPlane, namespace: str
) -> None:
    applied = crds.kubectl("apply", "-n", namespace, "-f", str(MANIFESTS / "samples"))
    for path in SAMPLES:
        sample = yaml.safe_load(path.read_text())
        name = sample["metadata"]["name"]
        assert f"scheduledtask.forwarder.dev/{name} created" in applied.stdout
        stored = json.loads(crds.kubectl("get", "st", name, "-n", namespace, "-o", "json").stdout)
        # Nothing was pruned: the apiserver keeps every field a sample sets.
        assert stored["spec"] == {**stored["spec"], **sample["spec"]}
        validate(sample["spec"], KNOWN_TASKS)
    by_category = crds.kubectl("get", "forwarder", "-n", namespace, "-o", "name").stdout
    assert len(by_category.split()) == len(SAMPLES)


def test_there_is_a_sample_per_feature() -> None:
    names = {path.stem for path in SAMPLES}
    assert {"ping-every-10s", "cron-helsinki", "http-forward", "one-off-at"} <= names
    specs = [yaml.safe_load(path.read_text())["spec"] for path in SAMPLES]
    used = {key for spec in specs for key in spec} | {
        key for spec in specs for key in spec["schedule"]
    }
    for feature in (
        "every",
        "cron",
        "at",
        "timeZone",
        "suspend",
        "startingDeadlineSeconds",
        "concurrencyPolicy",
        "jitterSeconds",
        "queue",
        "priority",
        "runHistoryLimit",
        "args",
        "kwargs",
        "startTime",
        "endTime",
        "maxRuns",
        "exclusions",
        "missedRunPolicy",
    ):
        assert feature in used, f"no sample shows {feature}"
    annotations = [
        (yaml.safe_load(path.read_text())["metadata"].get("annotations") or {}) for path in SAMPLES
    ]
    assert any("forwarder.dev/run-now" in a for a in annotations)


def test_kubectl_get_shows_the_printer_columns(crds: ControlPlane, namespace: str) -> None:
    spec = {"task": "forwarder.ping", "schedule": {"every": "30s"}, "suspend": False}
    crds.kubectl("apply", "-n", namespace, "-f", "-", stdin=document("shown", spec))
    # What the operator writes; the status subresource is the only way to write it.
    status = {
        "schedule": "every 30s",
        "nextRunTime": "2030-01-01T00:00:30Z",
        "lastScheduleTime": "2030-01-01T00:00:00Z",
        "lastRun": {"taskId": "t-1", "state": "SUCCESS"},
        "totalRunCount": 7,
        "succeededRunCount": 5,
        "failedRunCount": 2,
        "consecutiveFailures": 2,
        "lastFailureTime": "2030-01-01T00:00:00Z",
        "skippedRunCount": 4,
        "missedRunCount": 2,
        "excludedRunCount": 3,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Scheduled",
                "message": "every 30s (UTC)",
                "lastTransitionTime": "2030-01-01T00:00:00Z",
            }
        ],
    }
    crds.kubectl(
        "patch",
        "st",
        "shown",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    header, row = crds.kubectl("get", "st", "-n", namespace).stdout.splitlines()
    # "LAST SCHEDULE" is one column of two words.
    columns = ["NAME", "TASK", "SCHEDULE", "SUSPEND", "LAST", "LAST", "SCHEDULE", "NEXT", "AGE"]
    assert header.split() == columns
    assert row.split()[:6] == [
        "shown",
        "forwarder.ping",
        "every",
        "30s",
        "false",
        "SUCCESS",
    ]
    assert "2030-01-01T00:00:30Z" in row
    wide_header, wide_row = crds.kubectl("get", "st", "-n", namespace, "-o", "wide").stdout.split(
        "\n", 1
    )
    assert wide_header.split()[-6:] == [
        "READY",
        "REASON",
        "RUNS",
        "FAILURES",
        "MISSED",
        "EXCLUDED",
    ]
    assert wide_row.split()[-6:] == ["True", "Scheduled", "7", "2", "2", "3"]
    # The counts survive the CRD's schema (it prunes fields it does not declare).
    stored = json.loads(crds.kubectl("get", "st", "shown", "-n", namespace, "-o", "json").stdout)
    counts = (
        "succeededRunCount",
        "failedRunCount",
        "consecutiveFailures",
        "lastFailureTime",
        "skippedRunCount",
        "missedRunCount",
        "excludedRunCount",
    )
    assert {k: stored["status"][k] for k in counts} == {k: status[k] for k in counts}


def test_a_main_resource_write_cannot_set_status(crds: ControlPlane, namespace: str) -> None:
    """The status subresource: status is the operator's alone, whatever a user applies."""
    body = yaml.safe_load(
        document(
            "own-status", {"task": "forwarder.ping", "schedule": {"at": "2099-01-01T00:00:00Z"}}
        )
    )
    body["status"] = {"nextRunTime": "2000-01-01T00:00:00Z"}
    crds.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(body))
    stored = json.loads(
        crds.kubectl("get", "st", "own-status", "-n", namespace, "-o", "json").stdout
    )
    assert "status" not in stored or "nextRunTime" not in stored["status"]


def test_kubectl_explain_describes_the_spec(crds: ControlPlane) -> None:
    spec = crds.kubectl("explain", "scheduledtask.spec").stdout
    for field in (
        "task",
        "schedule",
        "timeZone",
        "concurrencyPolicy",
        "runHistoryLimit",
        "startTime",
        "endTime",
        "maxRuns",
        "exclusions",
    ):
        assert f"  {field}\t" in spec, spec
    assert "enum: Allow, Forbid, Replace" in spec
    every = crds.kubectl("explain", "st.spec.schedule.every").stdout
    assert "FIELD: every" in every
    assert "1h30m" in every or "duration" in every.lower()


PING = {"task": "forwarder.ping", "schedule": {"every": "10s"}}

# (id, spec, the apiserver's message (None: it accepts the resource), the operator's message)
# The operator's check runs on every spec the apiserver accepts and on the rest too: a cluster
# without CEL, or an old CRD, must not make a bad spec schedulable.
BAD = [
    ("no task", {"schedule": {"every": "1s"}}, "spec.task: Required value", "spec.task"),
    (
        "empty task",
        {**PING, "task": ""},
        "spec.task in body should be at least 1 chars",
        "spec.task",
    ),
    (
        "task with spaces",
        {**PING, "task": "my task"},
        "spec.task in body should match",
        "spec.task",
    ),
    ("unknown task", {**PING, "task": "no.such.task"}, None, "is not a registered task"),
    ("no schedule", {"task": "forwarder.ping"}, "spec.schedule: Required value", "spec.schedule"),
    # The CEL rule's own message: an empty schedule passes the schema's types, not the rule.
    (
        "empty schedule",
        {**PING, "schedule": {}},
        "exactly one of every, cron or at is required",
        "exactly one of every, cron or at",
    ),
    (
        "two schedules",
        {**PING, "schedule": {"every": "1s", "cron": "* * * * *"}},
        "spec.schedule: Too many: 2",
        "every and cron are both set",
    ),
    (
        "every and at",
        {**PING, "schedule": {"every": "1s", "at": "2099-01-01T00:00:00Z"}},
        "spec.schedule: Too many: 2",
        "every and at are both set",
    ),
    (
        "unknown schedule kind",
        {**PING, "schedule": {"often": "1s"}},
        'unknown field "spec.schedule.often"',
        "spec.schedule",
    ),
    (
        "zero interval",
        {**PING, "schedule": {"every": 0}},
        "spec.schedule.every in body should be greater than or equal to 1",
        "below the minimum",
    ),
    (
        "bad duration",
        {**PING, "schedule": {"every": "5 minutes"}},
        "spec.schedule.every in body should match",
        "is not a duration",
    ),
    ("bad cron value", {**PING, "schedule": {"cron": "61 * * * *"}}, None, "not a valid cron"),
    (
        "4-field cron",
        {**PING, "schedule": {"cron": "* * * *"}},
        "spec.schedule.cron in body should match",
        "5-field cron",
    ),
    (
        "unknown alias",
        {**PING, "schedule": {"cron": "@fortnightly"}},
        "spec.schedule.cron in body should match",
        "not a cron alias",
    ),
    (
        "at not a time",
        {**PING, "schedule": {"at": "tomorrow"}},
        "spec.schedule.at in body must be of type date-time",
        "spec.schedule.at",
    ),
    ("at in the past", {**PING, "schedule": {"at": "2001-01-01T00:00:00Z"}}, None, "in the past"),
    (
        "unknown zone",
        {**PING, "schedule": {"cron": "0 9 * * *"}, "timeZone": "Mars/Base"},
        None,
        "not a known IANA time zone",
    ),
    (
        "zone with spaces",
        {**PING, "timeZone": "New York"},
        "spec.timeZone in body should match",
        "spec.timeZone",
    ),
    (
        "suspend not a bool",
        {**PING, "suspend": "yes"},
        "spec.suspend in body must be of type boolean",
        "spec.suspend",
    ),
    (
        "deadline zero",
        {**PING, "startingDeadlineSeconds": 0},
        "spec.startingDeadlineSeconds in body should be greater than or equal to 1",
        "spec.startingDeadlineSeconds",
    ),
    (
        "deadline negative",
        {**PING, "startingDeadlineSeconds": -5},
        "spec.startingDeadlineSeconds in body should be greater than or equal to 1",
        "spec.startingDeadlineSeconds",
    ),
    (
        "policy unknown",
        {**PING, "concurrencyPolicy": "Sometimes"},
        'spec.concurrencyPolicy: Unsupported value: "Sometimes"',
        "spec.concurrencyPolicy",
    ),
    (
        "jitter negative",
        {**PING, "jitterSeconds": -1},
        "spec.jitterSeconds in body should be greater than or equal to 0",
        "spec.jitterSeconds",
    ),
    (
        "jitter too long",
        {**PING, "jitterSeconds": 3601},
        "spec.jitterSeconds in body should be less than or equal to 3600",
        "spec.jitterSeconds",
    ),
    ("queue with slash", {**PING, "queue": "a/b"}, "spec.queue in body should match", "spec.queue"),
    (
        "priority too high",
        {**PING, "priority": 10},
        "spec.priority in body should be less than or equal to 9",
        "spec.priority",
    ),
    (
        "priority negative",
        {**PING, "priority": -1},
        "spec.priority in body should be greater than or equal to 0",
        "spec.priority",
    ),
    (
        "history zero",
        {**PING, "runHistoryLimit": 0},
        "spec.runHistoryLimit in body should be greater than or equal to 1",
        "spec.runHistoryLimit",
    ),
    (
        "history too long",
        {**PING, "runHistoryLimit": 101},
        "spec.runHistoryLimit in body should be less than or equal to 100",
        "spec.runHistoryLimit",
    ),
    # A structural schema types args' items loosely, so a map's keys read as unknown fields.
    ("args not a list", {**PING, "args": {"a": 1}}, 'unknown field "spec.args.a"', "spec.args"),
    (
        "kwargs not a map",
        {**PING, "kwargs": [1]},
        "spec.kwargs in body must be of type object",
        "spec.kwargs",
    ),
    # kubectl asks for strict field validation: a typo is an error, not silently pruned.
    ("typo field", {**PING, "suspended": True}, 'unknown field "spec.suspended"', "spec.suspended"),
    # The window and the limit: the spec-level CEL rule compares the two instants.
    (
        "end before start",
        {**PING, "startTime": "2030-01-02T00:00:00Z", "endTime": "2030-01-01T00:00:00Z"},
        "endTime must be after startTime",
        "spec.endTime: 2030-01-01T00:00:00+00:00 is not after startTime",
    ),
    (
        "end equals start",
        {**PING, "startTime": "2030-01-01T00:00:00Z", "endTime": "2030-01-01T00:00:00Z"},
        "endTime must be after startTime",
        "is not after startTime",
    ),
    (
        "end not a time",
        {**PING, "endTime": "soon"},
        "spec.endTime in body must be of type date-time",
        "spec.endTime",
    ),
    (
        "maxRuns negative",
        {**PING, "maxRuns": -1},
        "spec.maxRuns in body should be greater than or equal to 1",
        "spec.maxRuns",
    ),
    (
        "maxRuns zero",
        {**PING, "maxRuns": 0},
        "spec.maxRuns in body should be greater than or equal to 1",
        "spec.maxRuns",
    ),
    (
        "missed policy unknown",
        {**PING, "missedRunPolicy": "Oldest"},
        'spec.missedRunPolicy: Unsupported value: "Oldest"',
        "spec.missedRunPolicy",
    ),
    # Exclusions: the schema checks their shape, only the operator a cron's values or a date.
    (
        "exclusion cron value",
        {**PING, "exclusions": {"cron": ["0 9 * * *", "61 * * * *"]}},
        None,
        "spec.exclusions.cron[1]: '61 * * * *' is not a valid cron expression",
    ),
    (
        "exclusion of every minute",
        {**PING, "exclusions": {"cron": ["*  * * * *"]}},
        None,
        "spec.exclusions.cron[0]: '*  * * * *' excludes every slot",
    ),
    (
        "exclusion 4-field cron",
        {**PING, "exclusions": {"cron": ["* * * *"]}},
        "spec.exclusions.cron[0] in body should match",
        "spec.exclusions.cron[0]",
    ),
    (
        "exclusion date shape",
        {**PING, "exclusions": {"dates": ["25.12.2030"]}},
        "spec.exclusions.dates[0] in body should match",
        "spec.exclusions.dates[0]",
    ),
    (
        "exclusion date value",
        {**PING, "exclusions": {"dates": ["2030-02-30"]}},
        None,
        "spec.exclusions.dates[0]: '2030-02-30' is not a date",
    ),
    (
        "exclusion unknown kind",
        {**PING, "exclusions": {"weekdays": ["Sat"]}},
        'unknown field "spec.exclusions.weekdays"',
        "spec.exclusions.weekdays",
    ),
]


@pytest.mark.parametrize(
    ("spec", "apiserver_says", "operator_says"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_resource_is_refused(
    crds: ControlPlane,
    namespace: str,
    spec: dict[str, Any],
    apiserver_says: str | None,
    operator_says: str,
) -> None:
    applied = crds.kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=document("bad", spec), check=False
    )
    if apiserver_says is None:
        assert applied.returncode == 0, applied.stderr
        assert "scheduledtask.forwarder.dev/bad created" in applied.stdout
    else:
        assert applied.returncode != 0
        assert apiserver_says in applied.stderr, applied.stderr
        listed = crds.kubectl("get", "st", "-n", namespace, "-o", "name").stdout
        assert listed.strip() == ""
    with pytest.raises(InvalidSpec, match=r"spec") as refused:
        validate(spec, KNOWN_TASKS)
    assert operator_says in str(refused.value)


def test_the_window_is_compared_as_instants(crds: ControlPlane, namespace: str) -> None:
    # 10:00+02:00 is 08:00Z: before 09:00Z, though it sorts after it as text. The CEL rule
    # compares timestamps (a date-time string is one in CEL), and the operator agrees.
    earlier_as_instant = {
        **PING,
        "startTime": "2030-01-01T10:00:00+02:00",
        "endTime": "2030-01-01T09:00:00Z",
    }
    applied = crds.kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=document("window", earlier_as_instant)
    )
    assert "scheduledtask.forwarder.dev/window created" in applied.stdout
    validate(earlier_as_instant, KNOWN_TASKS)
    later_as_instant = {
        **PING,
        "startTime": "2030-01-01T09:00:00Z",
        "endTime": "2030-01-01T10:00:00+02:00",
    }
    refused = crds.kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=document("late", later_as_instant), check=False
    )
    assert refused.returncode != 0
    assert "endTime must be after startTime" in refused.stderr, refused.stderr
    with pytest.raises(InvalidSpec, match="is not after startTime"):
        validate(later_as_instant, KNOWN_TASKS)
