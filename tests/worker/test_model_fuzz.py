"""Hypothesis on the spec model: every input either parses or raises InvalidSpec naming a
field, never another exception; and every spec that parses can say when it fires next.

The operator, the folder source and the api all call ``parse_spec`` on what users wrote, so an
exception of another kind there is a traceback in a handler (a retry loop in the operator)
instead of a ``Ready=False`` with a reason. Inputs mix plausible values, edge values (huge
durations, far dates, deep or infinite kwargs) and arbitrary JSON for every field.
"""

from __future__ import annotations

import time
from typing import Any

from forwarder_worker.schedules.model import InvalidSpec, parse_spec
from forwarder_worker.values import MAX_DEPTH
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NOW = time.time()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.just("\ud800"),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=12,
)


def deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


durations = st.one_of(
    st.integers(-10, 10**30),
    st.from_regex(r"\A(\d{1,20}d)?(\d{1,20}h)?(\d{1,20}m)?(\d{1,20}s)?\Z"),
    st.sampled_from(["1s", "90s", "1h30m", "0s", "", "1.5s", "-1s", "1y"]),
    st.text(max_size=8),
)
crons = st.one_of(
    st.sampled_from(["@hourly", "@daily", "@reboot", "0 0 30 2 *", "0 0 29 2 *", "*/0 * * * *"]),
    st.lists(
        st.sampled_from(["*", "*/5", "0", "59", "61", "1-3", "3-1", "L", "?", "MON", "x", "0/5"]),
        max_size=7,
    ).map(" ".join),
    st.text(max_size=20),
)
instants = st.one_of(
    st.datetimes().map(lambda when: when.isoformat()),
    st.sampled_from(
        ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2999-01-01T00:00:00+14:00", "now"]
    ),
    st.integers(-(10**12), 10**15),
    st.text(max_size=25),
)


def field(*plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(*plausible, json_values)


schedules = field(
    st.fixed_dictionaries({"every": durations}),
    st.fixed_dictionaries({"cron": crons}),
    st.fixed_dictionaries({"at": instants}),
    st.fixed_dictionaries({}, optional={"every": durations, "cron": crons, "at": instants}),
)
specs = st.fixed_dictionaries(
    {},
    optional={
        "task": field(st.sampled_from(["forwarder.ping", "a", "", "x" * 300, "bad name"])),
        "schedule": schedules,
        "args": field(st.lists(json_values, max_size=3), st.just([deep(MAX_DEPTH + 1)])),
        "kwargs": field(st.dictionaries(st.text(max_size=4), json_values, max_size=3)),
        "timeZone": field(st.sampled_from(["UTC", "Europe/Helsinki", "../etc", "Mars/Base", ""])),
        "suspend": json_values,
        "startingDeadlineSeconds": field(st.integers(-5, 10**9)),
        "concurrencyPolicy": field(st.sampled_from(["Allow", "Forbid", "Replace", "allow"])),
        "jitterSeconds": field(st.integers(-5, 10**6)),
        "queue": field(st.sampled_from(["default", "", "a b", "q" * 300])),
        "priority": field(st.integers(-1, 12)),
        "retries": field(
            st.fixed_dictionaries(
                {"limit": field(st.integers(-2, 60))},
                optional={"backoff": durations, "maxBackoff": durations},
            )
        ),
        "timeoutSeconds": field(st.integers(-1, 10**6)),
        "suspendAfterFailures": field(st.integers(-1, 2000)),
        "runHistoryLimit": field(st.integers(-1, 200)),
        "startTime": field(instants),
        "endTime": field(instants),
        "maxRuns": field(st.integers(-1, 10**12)),
        "exclusions": field(
            st.fixed_dictionaries(
                {},
                optional={
                    "cron": field(st.lists(crons, max_size=3)),
                    "dates": field(st.lists(instants, max_size=3)),
                },
            )
        ),
        "missedRunPolicy": field(st.sampled_from(["Latest", "All", "Skip", "None"])),
        "unknownField": json_values,
    },
)


# Close to valid: a task and a schedule, and a few fields from their plausible values only,
# so that the parsed path (and its timetable) is exercised as often as the refusals.
plausible = st.fixed_dictionaries(
    {
        "task": st.just("forwarder.ping"),
        "schedule": st.one_of(
            st.fixed_dictionaries({"every": durations}),
            st.fixed_dictionaries({"cron": crons}),
            st.fixed_dictionaries({"at": instants}),
        ),
    },
    optional={
        "args": st.lists(json_values, max_size=3),
        "timeZone": st.sampled_from(["UTC", "Europe/Helsinki", "America/St_Johns"]),
        "startingDeadlineSeconds": st.integers(-5, 10**9),
        "jitterSeconds": st.integers(-5, 10**6),
        "retries": st.fixed_dictionaries(
            {"limit": st.integers(-2, 60)},
            optional={"backoff": durations, "maxBackoff": durations},
        ),
        "startTime": instants,
        "endTime": instants,
        "maxRuns": st.integers(-1, 10**12),
        "exclusions": st.fixed_dictionaries(
            {},
            optional={"cron": st.lists(crons, max_size=2), "dates": st.lists(instants, max_size=2)},
        ),
    },
)


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raw=st.one_of(plausible, specs, json_values))
def test_every_spec_parses_or_raises_invalid_spec(raw: Any) -> None:
    try:
        spec = parse_spec(raw, now=NOW)
    except InvalidSpec as exc:
        message = str(exc)
    else:
        message = ""
    if message:
        assert message.startswith("spec"), message
        return
    # A spec that parses can be scheduled: its timetable answers without raising.
    spec.timetable(anchor=NOW).next_after(NOW)
