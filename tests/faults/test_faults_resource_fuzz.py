"""Resource fuzz: random ScheduledTask specs, valid and not, through the real API server and
the real operator.

Hypothesis generates specs field by field: good values, wrong types, out-of-range numbers,
bad durations and cron lines, unknown zones and tasks, extra and missing fields; and a few
hostile ones always run (``HOSTILE``: deep, huge and odd args and kwargs). Each is
POSTed to the API server, which refuses what the CRD's schema and CEL rule can tell is wrong
(422 with a message) and stores the rest with its defaults filled in and unknown fields
pruned; the operator process (as its own ServiceAccount, with a worker and a beat running)
handles what was stored. Afterwards:

* the operator is alive, logged no traceback and retries nothing (its log stops growing
  handler lines once everything is handled), and was refused nothing by the API server;
* every stored resource is ``Ready=True``, or ``Ready=False`` with a reason (InvalidSpec,
  UnknownTask) and a Warning Event, matching what the core's own validation says of the
  spec as stored;
* every valid, unsuspended ``every`` schedule has fired (a run record exists), and only the
  valid ones have an entry.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from forwarder_worker import Core
from forwarder_worker.schedules.model import InvalidSpec
from forwarder_worker.schedules.reconcile import validate
from forwarder_worker.values import MAX_DEPTH
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.hostile_yaml import deep_kwargs, laughs_kwargs
from support.operator_process import operator_env, running_operator
from support.processes import celery_beat, celery_worker, eventually, running
from support.scheduled_tasks import ScheduledTasks

KNOWN_TASKS = {"forwarder.ping", "forwarder.http", "tests.sleep", "tests.fail", "tests.flaky"}
EXAMPLES = 40

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.text(max_size=8), st.lists(st.none())
)
schedules = st.one_of(
    st.fixed_dictionaries({"every": st.sampled_from(["1s", "2s", 2, "1m", "0s", "-1s", "x", ""])}),
    st.fixed_dictionaries(
        {"cron": st.sampled_from(["* * * * *", "@hourly", "61 * * * *", "* * *", "@never"])}
    ),
    st.fixed_dictionaries(
        {"at": st.sampled_from(["2999-01-01T00:00:00Z", "2001-01-01T00:00:00Z", "tomorrow"])}
    ),
    st.just({}),
    st.just({"every": "1s", "cron": "* * * * *"}),
    junk,
)
anything = st.fixed_dictionaries(
    {
        "task": st.one_of(st.sampled_from([*sorted(KNOWN_TASKS), "nobody.task", ""]), junk),
        "schedule": schedules,
    },
    optional={
        "args": st.one_of(st.lists(st.integers(), max_size=2), junk),
        "kwargs": st.one_of(st.just({}), junk),
        "timeZone": st.sampled_from(["UTC", "Europe/Helsinki", "Mars/Olympus", "", 5]),
        "suspend": st.one_of(st.booleans(), junk),
        "startingDeadlineSeconds": st.one_of(st.integers(-5, 100), junk),
        "concurrencyPolicy": st.sampled_from(["Allow", "Forbid", "Replace", "Sometimes", 1]),
        "jitterSeconds": st.one_of(st.integers(-1, 3), junk),
        "queue": st.sampled_from(["default", "", "bad queue!"]),
        "priority": st.one_of(st.integers(-1, 12), junk),
        "runHistoryLimit": st.one_of(st.integers(-1, 200), junk),
        "unexpected": junk,
    },
)
# Specs of the right shape and ranges, which the API server admits, and among them the
# mistakes only the operator can tell: a cron that is out of range or never fires, a zero
# interval, an instant in the past, an unknown zone or task.
admissible = st.fixed_dictionaries(
    {
        "task": st.sampled_from([*sorted(KNOWN_TASKS), "nobody.task"]),
        "schedule": st.one_of(
            st.fixed_dictionaries({"every": st.sampled_from(["1s", "2s", 2, "1m", "0s", "0"])}),
            st.fixed_dictionaries(
                {"cron": st.sampled_from(["* * * * *", "@hourly", "61 * * * *", "0 0 31 2 *"])}
            ),
            st.fixed_dictionaries(
                {"at": st.sampled_from(["2999-01-01T00:00:00Z", "2001-01-01T00:00:00Z"])}
            ),
        ),
    },
    optional={
        "args": st.lists(st.integers(), max_size=2),
        "kwargs": st.just({}),
        "timeZone": st.sampled_from(["UTC", "Europe/Helsinki", "Mars/Olympus"]),
        "suspend": st.booleans(),
        "startingDeadlineSeconds": st.integers(1, 100),
        "concurrencyPolicy": st.sampled_from(["Allow", "Forbid", "Replace"]),
        "jitterSeconds": st.integers(0, 3),
        "priority": st.integers(0, 9),
        "runHistoryLimit": st.integers(1, 100),
    },
)
# Three in four admissible: almost every spec of `anything` has some field the schema refuses.
specs = st.integers(0, 3).flatmap(lambda pick: anything if pick == 0 else admissible)


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


# Hostile values the schema's preserve-unknown-fields args and kwargs let through (see
# docs/reliability.md, "Hostile input"): nested one level past the core's limit and far past
# it, an integer past int64, and a big value.
HOSTILE = [
    {"task": "forwarder.ping", "schedule": {"every": "1s"}, "kwargs": {"a": _nested(MAX_DEPTH)}},
    {"task": "forwarder.ping", "schedule": {"every": "1s"}, "args": [_nested(300)]},
    {"task": "forwarder.ping", "schedule": {"every": "1s"}, "args": [10**30, -(10**30)]},
    {"task": "forwarder.ping", "schedule": {"every": "1s"}, "kwargs": {"big": "x" * 200_000}},
]


def _verdict(spec: Any) -> bool:
    try:
        validate(spec, KNOWN_TASKS)
    except (InvalidSpec, ValueError):
        return False
    return True


def _handler_lines(text: str, namespace: str) -> int:
    """The operator's lines about the fuzzed resources (applies, warnings, retries)."""
    return sum(1 for line in text.splitlines() if f"[{namespace}/fuzz-" in line or "retry" in line)


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_random_specs_through_the_operator(
    scheduled_tasks: ScheduledTasks,
    operator_kubeconfig: Path,
    redis_url: str,
    rclient: redis.Redis,
    core: Core,
    logs: Path,
) -> None:
    kube, namespace = scheduled_tasks, scheduled_tasks.namespace
    created: dict[str, Any] = {}  # name: the spec as the API server stored it
    refused: dict[str, tuple[Any, str]] = {}  # name: the spec sent, the server's message
    env = operator_env(
        redis_url,
        operator_kubeconfig,
        [namespace],
        FORWARDER_OPERATOR_STATUS_INTERVAL="0.5",
        FORWARDER_OPERATOR_SWEEP_INTERVAL="5",
    )
    worker = celery_worker(env, logs / "worker.log")
    beat = celery_beat(env, logs / "beat.log")
    store, runs = core.store, core.runs
    with running(worker, beat), running_operator(env, logs / "operator.log") as operator:

        @given(spec=specs)
        @example(spec=HOSTILE[0])
        @example(spec=HOSTILE[1])
        @example(spec=HOSTILE[2])
        @example(spec=HOSTILE[3])
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def create(spec: dict[str, Any]) -> None:
            name = f"fuzz-{len(created) + len(refused):03d}"
            reply = kube.post(name, spec)
            if reply.status_code == 201:
                created[name] = reply.json()["spec"]
            else:
                # What the schema can tell is wrong is refused as invalid, never a 500.
                assert reply.status_code == 422, (spec, reply.text)
                refused[name] = (spec, reply.json()["message"])

        create()
        assert len(created) + len(refused) >= EXAMPLES // 2
        verdicts = {name: _verdict(spec) for name, spec in created.items()}
        # Both kinds reach the operator: the schema does not catch everything.
        assert any(verdicts.values()) and not all(verdicts.values()), (verdicts, refused)

        # Every resource gets a Ready condition that agrees with the core's validation.
        try:
            eventually(lambda: all(kube.ready(n) for n in created), 120, 0.5)
        except AssertionError:
            missing = {n: created[n] for n in created if not kube.ready(n)}
            raise AssertionError(f"no Ready condition on {missing}") from None
        for name, valid in verdicts.items():
            ready = kube.ready(name)
            if valid:
                assert ready["status"] == "True", (name, created[name], ready)
                assert store.get(f"{namespace}/{name}") is not None, name
            else:
                assert ready["status"] == "False", (name, created[name], ready)
                assert ready["reason"] in ("InvalidSpec", "UnknownTask"), ready
                assert ready.get("message"), ready
                assert store.get(f"{namespace}/{name}") is None, (name, created[name])
                assert kube.warnings(name), f"no Warning Event for {name}"

        # The valid, unsuspended every-schedules fire.
        firing = [
            name
            for name, spec in created.items()
            if verdicts[name] and "every" in spec["schedule"] and spec.get("suspend") is not True
        ]
        eventually(
            lambda: all(runs.recent(schedule=f"{namespace}/{n}", limit=1) for n in firing),
            60,
            0.5,
            message=f"firings of {firing}",
        )

        # No crash, no traceback, no retry loop: handler lines stop growing.
        before = _handler_lines(operator.output(), namespace)
        time.sleep(3)
        assert _handler_lines(operator.output(), namespace) == before
        assert operator.alive()
        assert "Traceback" not in operator.output()


def _yaml_resource(name: str, namespace: str, kwargs: str) -> bytes:
    return (
        "apiVersion: forwarder.dev/v1alpha1\nkind: ScheduledTask\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        "spec:\n  task: forwarder.ping\n  schedule: {every: 1s}\n"
        f"  kwargs:\n{kwargs}"
    ).encode()


@pytest.mark.cluster
def test_yaml_bombs_never_reach_the_operator(scheduled_tasks: ScheduledTasks) -> None:
    """What ``kubectl apply`` of a hostile file sends: YAML, decoded by the API server itself.
    An aliases bomb ("excessive aliasing") and nesting of 10,000 levels are refused there
    with 400, before anything is stored, so the operator never sees them."""
    kube, namespace = scheduled_tasks, scheduled_tasks.namespace
    bombs = {
        "laughs": laughs_kwargs(),
        "deep": deep_kwargs(10_000),
    }
    for name, kwargs in bombs.items():
        reply = kube.http.post(
            kube.path(namespace),
            content=_yaml_resource(name, namespace, kwargs),
            headers={"Content-Type": "application/yaml"},
        )
        assert reply.status_code == 400, (name, reply.status_code, reply.text[:300])
        assert kube.get(name) is None, name
