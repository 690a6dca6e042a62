"""The bounds on free-form values (forwarder_worker.values), and the doors that use them
without a process around them: the run-now overrides annotation the operator reads, and
``forwarder trigger --args/--kwargs``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from forwarder_worker.dispatch.dispatcher import parse_overrides
from forwarder_worker.local.cli import Refused, _json_option
from forwarder_worker.values import MAX_DEPTH, MAX_VALUES, check_json_value


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_the_deepest_value_passes_and_one_level_more_does_not() -> None:
    check_json_value(nested(MAX_DEPTH))
    with pytest.raises(ValueError, match=f"nested more than {MAX_DEPTH} levels deep"):
        check_json_value({"a": nested(MAX_DEPTH)})


def test_shared_values_count_each_time_they_are_used() -> None:
    # What YAML aliases make: 10 lists of the same 10 lists..., small in memory.
    laughs: Any = ["lol"] * 10
    for _ in range(8):
        laughs = [laughs] * 10
    with pytest.raises(ValueError, match=f"holds more than {MAX_VALUES} values"):
        check_json_value(laughs)
    # A document of too many values written out one by one, likewise.
    with pytest.raises(ValueError, match=f"holds more than {MAX_VALUES} values"):
        check_json_value({"a": [0] * MAX_VALUES})


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"a": float("inf")}, "inf is not a finite number"),
        ([float("-inf")], "-inf is not a finite number"),
        ([float("nan")], "nan is not a finite number"),
        ({"a": "x\ud800"}, "lone UTF-16 surrogate"),
        ({"\udfff": 1}, "lone UTF-16 surrogate"),
    ],
)
def test_values_json_or_utf8_cannot_carry_are_refused(value: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_json_value(value)


def test_ordinary_values_pass() -> None:
    check_json_value({"url": "http://x", "n": [1, 2.5, None, True, "é", 10**300]})


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"runNow": "1", "args": ' + "[" * 100_000 + "]" * 100_000 + "}", "is not JSON"),
        ('{"runNow": "1", "kwargs": {"a": Infinity}}', "kwargs inf is not a finite number"),
        ('{"runNow": "1", "kwargs": {"a": NaN}}', "kwargs nan is not a finite number"),
        (json.dumps({"runNow": "1", "args": [nested(MAX_DEPTH)]}), "args is nested more"),
        ('{"runNow": "1", "kwargs": {"a": "\\ud800"}}', "kwargs .* lone UTF-16 surrogate"),
        ('{"runNow": "1", "args": [' + "9" * 5000 + "]}", "is not JSON"),
    ],
)
def test_a_hostile_run_now_overrides_annotation_is_a_value_error(text: str, says: str) -> None:
    # The operator turns a ValueError into one RunNowFailed Warning Event for that value.
    with pytest.raises(ValueError, match=says):
        parse_overrides(text, "1")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[" * 100_000 + "]" * 100_000, "--args is not JSON"),
        ("[Infinity]", "--args inf is not a finite number"),
        (json.dumps([nested(MAX_DEPTH)]), "--args is nested more"),
    ],
)
def test_forwarder_trigger_refuses_hostile_args(text: str, says: str) -> None:
    with pytest.raises(Refused, match=says):
        _json_option(text, "--args", list)
