"""Resource fuzz: random ScheduledTask specs, valid and not, through the real operator.

Hypothesis generates specs field by field: good values, wrong types, out-of-range numbers,
bad durations and cron lines, unknown zones and tasks, extra and missing fields. Each becomes
a resource on the Kubernetes emulator, handled by the operator process (with a worker and a
beat running). Afterwards:

* the operator is alive, logged no traceback and retries nothing (its log stops growing
  handler lines once everything is handled);
* every resource is ``Ready=True``, or ``Ready=False`` with a reason (InvalidSpec,
  UnknownTask) and a Warning Event, matching what the core's own validation says of the spec;
* every valid, unsuspended ``every`` schedule has fired (a run record exists), and only the
  valid ones have an entry.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from forwarder_worker import Core
from forwarder_worker.schedules.model import InvalidSpec
from forwarder_worker.schedules.reconcile import validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.kube_emulator import served_emulator
from support.operator_process import API, ready_condition, start_operator, wait_until_watching
from support.processes import celery_beat, celery_worker, eventually, forwarder_env, running

KNOWN_TASKS = {"forwarder.ping", "forwarder.http", "tests.sleep", "tests.fail", "tests.flaky"}
EXAMPLES = 30

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
specs = st.fixed_dictionaries(
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


def _verdict(spec: Any) -> bool:
    try:
        validate(spec, KNOWN_TASKS)
    except (InvalidSpec, ValueError):
        return False
    return True


def _warnings(kube: httpx.Client, name: str) -> list[dict[str, Any]]:
    reply = kube.get(
        "/api/v1/namespaces/default/events",
        params={"fieldSelector": f"involvedObject.name={name}"},
    )
    return [e for e in reply.json()["items"] if e.get("type") == "Warning"]


def _handler_lines(text: str) -> int:
    """The operator's lines about the fuzzed resources (applies, warnings, retries)."""
    return sum(1 for line in text.splitlines() if "[default/fuzz-" in line or "retry" in line)


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_random_specs_through_the_operator(
    tmp_path: Path, redis_url: str, rclient: redis.Redis, core: Core, logs: Path
) -> None:
    created: dict[str, Any] = {}
    with served_emulator(tmp_path / "kube") as cluster:
        env = forwarder_env(
            redis_url,
            KUBECONFIG=str(cluster.kubeconfig),
            FORWARDER_OPERATOR_STATUS_INTERVAL="0.5",
            FORWARDER_OPERATOR_SWEEP_INTERVAL="5",
        )
        worker = celery_worker(env, logs / "worker.log")
        beat = celery_beat(env, logs / "beat.log")
        operator = start_operator(env, logs / "operator.log")
        store, runs = core.store, core.runs
        with (
            running(worker, beat, operator),
            httpx.Client(base_url=cluster.url, timeout=30) as kube,
        ):
            wait_until_watching(kube)

            @given(spec=specs)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def create(spec: dict[str, Any]) -> None:
                name = f"fuzz-{len(created):03d}"
                body = {
                    "apiVersion": "forwarder.dev/v1alpha1",
                    "kind": "ScheduledTask",
                    "metadata": {"name": name},
                    "spec": spec,
                }
                reply = kube.post(API, json=body)
                assert reply.status_code in (200, 201), reply.text
                created[name] = spec

            create()
            assert len(created) >= EXAMPLES // 2
            verdicts = {name: _verdict(spec) for name, spec in created.items()}
            assert any(verdicts.values()) and not all(verdicts.values()), verdicts

            # Every resource gets a Ready condition that agrees with the core's validation.
            try:
                eventually(lambda: all(ready_condition(kube, n) for n in created), 120, 0.5)
            except AssertionError:
                missing = {n: created[n] for n in created if not ready_condition(kube, n)}
                raise AssertionError(f"no Ready condition on {missing}") from None
            for name, valid in verdicts.items():
                ready = ready_condition(kube, name)
                if valid:
                    assert ready["status"] == "True", (name, created[name], ready)
                    assert store.get(f"default/{name}") is not None, name
                else:
                    assert ready["status"] == "False", (name, created[name], ready)
                    assert ready["reason"] in ("InvalidSpec", "UnknownTask"), ready
                    assert ready.get("message"), ready
                    assert store.get(f"default/{name}") is None, (name, created[name])
                    assert _warnings(kube, name), f"no Warning Event for {name}"

            # The valid, unsuspended every-schedules fire.
            firing = [
                name
                for name, spec in created.items()
                if verdicts[name]
                and "every" in spec["schedule"]
                and spec.get("suspend") is not True
            ]
            eventually(
                lambda: all(runs.recent(schedule=f"default/{n}", limit=1) for n in firing),
                60,
                0.5,
                message=f"firings of {firing}",
            )

            # No crash, no traceback, no retry loop: handler lines stop growing.
            before = _handler_lines(operator.output())
            time.sleep(3)
            assert _handler_lines(operator.output()) == before
            assert operator.alive()
            assert "Traceback" not in operator.output()
