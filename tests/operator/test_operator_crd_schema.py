"""The ScheduledTask CRD: its shape, every sample against its schema, and bad resources.

A real apiserver validates with the CRD's openAPIV3Schema (and CEL); the emulator and old
clusters do not, so the operator validates again with the core's model. Every bad resource
below must be rejected by at least one of the two, and the table says which.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from forwarder_worker import Core
from forwarder_worker.schedules.model import InvalidSpec
from forwarder_worker.schedules.reconcile import validate
from forwarder_worker.settings import Settings
from support.kube_emulator import CRD_PATH

SAMPLES = sorted((CRD_PATH.parents[1] / "samples").glob("*.yaml"))
# The built-in tasks, as the operator sees them (samples use nothing else).
KNOWN_TASKS = Core.from_settings(Settings()).registered_task_names()


def crd() -> dict[str, Any]:
    return dict(yaml.safe_load(CRD_PATH.read_text()))


def as_json_schema(node: Any, top: bool = True) -> Any:
    """openAPIV3Schema -> JSON Schema, read the way the apiserver reads it.

    ``nullable`` becomes a null type. An object with ``properties`` takes no other fields
    (unless it preserves unknown fields), as kubectl's strict field validation rejects them;
    the top level is exempt, because ``apiVersion``/``kind``/``metadata`` are the apiserver's.
    x-kubernetes-* keywords are left for jsonschema to ignore.
    """
    if isinstance(node, list):
        return [as_json_schema(item, False) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: as_json_schema(value, False) for key, value in node.items()}
    if converted.pop("nullable", False) and "type" in converted:
        converted["type"] = [converted["type"], "null"]
    if (
        "properties" in node
        and not top
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and node.get("properties") is not None
        and all(isinstance(v, dict) for v in node["properties"].values())
    ):
        converted["additionalProperties"] = False
    return converted


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def is_date_time(value: object) -> bool:
    """RFC 3339, as the apiserver checks it (jsonschema's own check needs an extra package)."""
    if not isinstance(value, str) or "T" not in value.upper():
        return False
    datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    return True


def validator() -> jsonschema.Draft7Validator:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(as_json_schema(schema), format_checker=FORMATS)


def schema_errors(resource: dict[str, Any]) -> list[str]:
    return [error.message for error in validator().iter_errors(resource)]


def resource(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "forwarder.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": "x"},
        "spec": spec,
    }


def test_crd_names_scope_and_subresources() -> None:
    definition = crd()
    assert definition["metadata"]["name"] == "scheduledtasks.forwarder.dev"
    spec = definition["spec"]
    assert spec["group"] == "forwarder.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ScheduledTask"
    assert spec["names"]["shortNames"] == ["st", "stask"]
    assert spec["names"]["categories"] == ["forwarder"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_crd_printer_columns() -> None:
    (version,) = crd()["spec"]["versions"]
    columns = [c for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert [c["name"].upper() for c in columns] == [
        "TASK",
        "SCHEDULE",
        "SUSPEND",
        "LAST",
        "LAST SCHEDULE",
        "NEXT",
        "AGE",
    ]
    for column in version["additionalPrinterColumns"]:
        assert column["jsonPath"].startswith(".")
        assert column["type"] in {"string", "integer", "boolean", "date", "number"}


def test_crd_exactly_one_schedule_rule_in_cel_and_in_schema() -> None:
    (version,) = crd()["spec"]["versions"]
    schedule = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["schedule"]
    (rule,) = schedule["x-kubernetes-validations"]
    assert "has(self.every)" in rule["rule"] and "size() == 1" in rule["rule"]
    assert "exactly one" in rule["message"]
    # Without CEL (old clusters), min/maxProperties enforce the same rule.
    assert schedule["minProperties"] == schedule["maxProperties"] == 1


def test_crd_schema_is_structural_enough_for_the_apiserver() -> None:
    """No $ref (CRDs cannot use it) and a type or an explicit escape on every property."""

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            assert "$ref" not in node, path
            # The apiserver refuses additionalProperties next to properties.
            assert not ("properties" in node and "additionalProperties" in node), path
            for branch in node.get("anyOf", []):  # only the int-or-string form is allowed
                assert set(branch) == {"type"}, path
            for name, child in (node.get("properties") or {}).items():
                escape = child.get("x-kubernetes-int-or-string") or child.get(
                    "x-kubernetes-preserve-unknown-fields"
                )
                assert "type" in child or escape, f"{path}.{name} has no type"
                walk(child, f"{path}.{name}")
            if "items" in node:
                walk(node["items"], f"{path}[]")

    (version,) = crd()["spec"]["versions"]
    walk(version["schema"]["openAPIV3Schema"], "")


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
    ):
        assert feature in used, f"no sample shows {feature}"
    annotations = [
        (yaml.safe_load(path.read_text())["metadata"].get("annotations") or {}) for path in SAMPLES
    ]
    assert any("forwarder.dev/run-now" in a for a in annotations)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_is_valid_for_the_schema_and_the_operator(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    assert schema_errors(document) == []
    assert document["apiVersion"] == "forwarder.dev/v1alpha1"
    assert document["kind"] == "ScheduledTask"
    validate(document["spec"], KNOWN_TASKS)


PING = {"task": "forwarder.ping", "schedule": {"every": "10s"}}

# (id, spec, rejected by the schema, rejected by the operator's validation)
BAD = [
    ("no task", {"schedule": {"every": "1s"}}, True, True),
    ("empty task", {**PING, "task": ""}, True, True),
    ("task with spaces", {**PING, "task": "my task"}, True, True),
    ("unknown task", {**PING, "task": "no.such.task"}, False, True),
    ("no schedule", {"task": "forwarder.ping"}, True, True),
    ("empty schedule", {**PING, "schedule": {}}, True, True),
    ("two schedules", {**PING, "schedule": {"every": "1s", "cron": "* * * * *"}}, True, True),
    ("unknown schedule kind", {**PING, "schedule": {"often": "1s"}}, True, True),
    ("zero interval", {**PING, "schedule": {"every": 0}}, True, True),
    ("bad duration", {**PING, "schedule": {"every": "5 minutes"}}, True, True),
    ("bad cron value", {**PING, "schedule": {"cron": "61 * * * *"}}, False, True),
    ("4-field cron", {**PING, "schedule": {"cron": "* * * *"}}, True, True),
    ("unknown alias", {**PING, "schedule": {"cron": "@fortnightly"}}, True, True),
    ("at not a time", {**PING, "schedule": {"at": "tomorrow"}}, True, True),
    ("at in the past", {**PING, "schedule": {"at": "2001-01-01T00:00:00Z"}}, False, True),
    (
        "unknown zone",
        {**PING, "schedule": {"cron": "0 9 * * *"}, "timeZone": "Mars/Base"},
        False,
        True,
    ),
    ("zone with spaces", {**PING, "timeZone": "New York"}, True, True),
    ("suspend not a bool", {**PING, "suspend": "yes"}, True, True),
    ("deadline zero", {**PING, "startingDeadlineSeconds": 0}, True, True),
    ("policy unknown", {**PING, "concurrencyPolicy": "Sometimes"}, True, True),
    ("jitter negative", {**PING, "jitterSeconds": -1}, True, True),
    ("jitter too long", {**PING, "jitterSeconds": 3601}, True, True),
    ("queue with slash", {**PING, "queue": "a/b"}, True, True),
    ("priority too high", {**PING, "priority": 10}, True, True),
    ("history zero", {**PING, "runHistoryLimit": 0}, True, True),
    ("history too long", {**PING, "runHistoryLimit": 101}, True, True),
    ("args not a list", {**PING, "args": {"a": 1}}, True, True),
    ("kwargs not a map", {**PING, "kwargs": [1]}, True, True),
    ("typo field", {**PING, "suspended": True}, True, True),
]


@pytest.mark.parametrize(
    ("spec", "by_schema", "by_operator"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_resource_is_rejected(spec: dict[str, Any], by_schema: bool, by_operator: bool) -> None:
    errors = schema_errors(resource(spec))
    assert bool(errors) is by_schema, errors
    if by_operator:
        with pytest.raises(InvalidSpec, match=r"spec"):
            validate(spec, KNOWN_TASKS)
    else:
        validate(spec, KNOWN_TASKS)
    assert by_schema or by_operator
