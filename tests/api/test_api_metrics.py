"""``GET /metrics``'s per-schedule, run, queue, worker and beat-lock figures, end to end.

Per schedule: the shared stack's real beat, worker and folder source run a schedule that
succeeds, one that fails until suspendAfterFailures pauses it, one that Forbid skips and a
suspended cron one, and each series is checked against what Redis holds read just before and
just after the scrape (the schedules keep firing meanwhile). Deleting a schedule drops its
series and leaves no key of its own. Missed slots, workers alive and the beat lock use their
own Redis, worker and beat, stopped and started by the test. Queue lengths are checked
against kombu's own count, under a key prefix, with priorities.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from forwarder_api.main import create_app
from forwarder_api.settings import ApiSettings
from forwarder_worker import Core, Settings
from forwarder_worker.runs.records import ScheduleRuns
from forwarder_worker.schedules.store import Entry
from prometheus_client.parser import text_string_to_metric_families
from support.processes import celery_beat, celery_worker, eventually, forwarder_env

LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of metric ``name``: its labels (sorted pairs) -> value."""
    out = {}
    for labels, value in re.findall(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", text, re.M):
        out[tuple(sorted(LABEL.findall(labels)))] = float(value)
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample of ``name`` with exactly ``labels``, or None when there is none."""
    return series(text, name).get(tuple(sorted(labels.items())))


def of(schedule: str, task: str, **more: str) -> dict[str, str]:
    """A schedule's labels in namespace ``default``."""
    return {"namespace": "default", "schedule": schedule, "task": task, **more}


# -- per schedule, on the shared stack -------------------------------------------------------

SCHEDULES = {
    "metrics-ok": {"task": "tests.sleep", "kwargs": {"seconds": 0.3}, "schedule": {"every": "1s"}},
    "metrics-bad": {
        "task": "tests.fail",
        "schedule": {"every": "1s"},
        "suspendAfterFailures": 2,
    },
    "metrics-busy": {
        "task": "tests.sleep",
        "kwargs": {"seconds": 2.5},
        "schedule": {"every": "1s"},
        "concurrencyPolicy": "Forbid",
    },
    "metrics-off": {"task": "forwarder.ping", "schedule": {"cron": "*/5 * * * *"}, "suspend": True},
}


@pytest.fixture
def stack_core(stack: Any) -> Iterator[Core]:
    core = Core.from_settings(Settings(redis_url=stack.redis_url))
    yield core
    core.close()


def summaries(core: Core) -> dict[str, ScheduleRuns]:
    return {name: core.runs.summary(f"default/{name}") for name in SCHEDULES}


def test_schedule_series_follow_real_runs(stack: Any, api: httpx.Client, stack_core: Core) -> None:
    before_durations = api.get("/metrics").text
    sleeps = value(before_durations, "forwarder_task_duration_seconds_count", task="tests.sleep")
    for name, spec in SCHEDULES.items():
        created = api.post("/schedules", json={"metadata": {"name": name}, "spec": spec})
        assert created.status_code == 201, created.text

    def settled() -> bool:
        now = summaries(stack_core)
        paused = stack_core.store.get("default/metrics-bad")
        return (
            now["metrics-ok"].succeeded >= 2
            and now["metrics-busy"].skipped >= 1
            and paused is not None
            and paused.paused is not None
        )

    eventually(settled, 60, 0.2, "successes, a skip and a pause")
    before = summaries(stack_core)
    text = api.get("/metrics").text
    after = summaries(stack_core)

    def between(name: str, figure: str, metric: float | None) -> None:
        low, high = getattr(before[name], figure), getattr(after[name], figure)
        assert metric is not None and low <= metric <= high, (name, figure, low, metric, high)

    for name, spec in SCHEDULES.items():
        labels = of(name, spec["task"])
        runs = "forwarder_schedule_runs_total"
        between(name, "succeeded", value(text, runs, **labels, outcome="succeeded"))
        between(name, "failed", value(text, runs, **labels, outcome="failed"))
        between(name, "skipped", value(text, runs, **labels, outcome="skipped"))
        between(
            name,
            "consecutive_failures",
            value(text, "forwarder_schedule_consecutive_failures", **labels),
        )
        success = value(text, "forwarder_schedule_last_success_timestamp_seconds", **labels)
        if after[name].last_successful_time is None:
            assert success is None, name  # only for schedules that have succeeded
        else:
            between(name, "last_successful_time", success)
        last_run = value(text, "forwarder_schedule_last_run_timestamp_seconds", **labels)
        if after[name].last_schedule_time is None:
            assert last_run is None, name
        else:
            between(name, "last_schedule_time", last_run)
        stored = stack_core.store.get(f"default/{name}")
        assert stored is not None
        assert value(text, "forwarder_schedule_missed_slots_total", **labels) == stored.meta.missed
        excluded = value(text, "forwarder_schedule_excluded_slots_total", **labels)
        assert excluded == stored.meta.excluded

    ok, bad = of("metrics-ok", "tests.sleep"), of("metrics-bad", "tests.fail")
    off = of("metrics-off", "forwarder.ping")
    busy = of("metrics-busy", "tests.sleep")
    assert value(text, "forwarder_schedule_suspended", **ok) == 0
    assert value(text, "forwarder_schedule_suspended", **busy) == 0
    assert value(text, "forwarder_schedule_suspended", **bad) == 1  # after failures
    assert value(text, "forwarder_schedule_suspended", **off) == 1  # spec.suspend
    assert value(text, "forwarder_schedule_period_seconds", **ok) == 1
    assert value(text, "forwarder_schedule_period_seconds", **off) == 300  # */5 * * * *
    next_ok = value(text, "forwarder_schedule_next_run_timestamp_seconds", **ok)
    assert next_ok is not None and abs(next_ok - time.time()) < 5
    assert value(text, "forwarder_schedule_next_run_timestamp_seconds", **bad) is None
    assert value(text, "forwarder_schedule_next_run_timestamp_seconds", **off) is None
    assert value(text, "forwarder_schedule_last_success_timestamp_seconds", **bad) is None
    assert value(text, "forwarder_schedule_last_run_timestamp_seconds", **off) is None
    lateness = value(text, "forwarder_schedule_last_lateness_seconds", **ok)
    assert lateness is not None and 0 <= lateness < 5
    assert value(text, "forwarder_schedule_last_lateness_seconds", **off) is None

    # Run durations by task: every tests.sleep run of metrics-ok slept 0.3 s, and metrics-busy's
    # 2.5 s; the tests.fail runs count too.
    count = value(text, "forwarder_task_duration_seconds_count", task="tests.sleep")
    total = value(text, "forwarder_task_duration_seconds_sum", task="tests.sleep")
    assert count is not None and total is not None
    ran = count - (sleeps or 0)
    assert ran >= before["metrics-ok"].succeeded
    assert total >= 0.3 * ran
    assert value(text, "forwarder_task_duration_seconds_bucket", task="tests.sleep", le="0.25") == (
        value(
            before_durations,
            "forwarder_task_duration_seconds_bucket",
            task="tests.sleep",
            le="0.25",
        )
        or 0
    )
    assert value(text, "forwarder_task_duration_seconds_bucket", task="tests.sleep", le="+Inf") == (
        count
    )
    failed = value(text, "forwarder_task_duration_seconds_count", task="tests.fail")
    assert failed is not None and failed >= before["metrics-bad"].failed

    # Deleting a schedule drops its series and every key of its own. Suspended first, and
    # its runs let end: a run ending after the delete would write its schedule's counters.
    for name in ("metrics-ok", "metrics-busy"):
        assert api.patch(f"/schedules/default/{name}", json={"spec": {"suspend": True}}).is_success
    eventually(
        lambda: (
            not any(
                stack_core.client.scard(stack_core.keys.active_runs(f"default/{n}"))
                for n in SCHEDULES
            )
        ),
        30,
        0.2,
        "the runs ended",
    )
    for name in SCHEDULES:
        assert api.delete(f"/schedules/default/{name}").status_code == 204

    def gone() -> bool:
        text = api.get("/metrics").text
        return not any(f'schedule="{name}"' in text for name in SCHEDULES)

    eventually(gone, 30, 0.2, "the series gone")
    left = [
        key
        for name in SCHEDULES
        for key in stack_core.client.scan_iter(match=f"*default/{name}*", count=1000)
    ]
    assert left == []
    for name in SCHEDULES:
        for hash_key in (stack_core.keys.run_now, stack_core.keys.resume, stack_core.keys.backfill):
            assert not stack_core.client.hexists(hash_key, f"default/{name}")


# -- workers, the beat lock and missed slots, on a Redis of their own ------------------------


def api_settings(redis_url: str, **overrides: Any) -> ApiSettings:
    return ApiSettings(
        redis_url=redis_url,
        schedules_mode="local",
        api_tokens=["test-token-0123456789"],
        **overrides,
    )


def test_workers_beat_lock_and_missed_slots(redis_url: str, tmp_path: Path) -> None:
    env = forwarder_env(redis_url)
    core = Core.from_settings(Settings(redis_url=redis_url))
    with TestClient(create_app(api_settings(redis_url, schedules_dir=tmp_path))) as client:

        def scrape() -> str:
            return client.get("/metrics").text

        assert value(scrape(), "forwarder_workers") == 0
        assert value(scrape(), "forwarder_beat_lock_held") == 0

        worker = celery_worker(env, tmp_path / "worker.log", concurrency=1)
        try:
            eventually(lambda: " ready." in worker.output(), 60, 0.2, "worker ready")
            assert value(scrape(), "forwarder_workers") == 1
            second = celery_worker(env, tmp_path / "worker2.log", concurrency=1, name="second")
            try:
                eventually(lambda: value(scrape(), "forwarder_workers") == 2, 60, 0.2, "two")
            finally:
                second.stop()
            # A stopping worker takes itself out at once, not after the 30 s it would age.
            assert value(scrape(), "forwarder_workers") == 1

            core.store.upsert(
                Entry(name="default/ticks", task="forwarder.ping", schedule={"every": 1})
            )
            labels = of("ticks", "forwarder.ping")
            beat = celery_beat(env, tmp_path / "beat.log")
            try:
                eventually(
                    lambda: value(scrape(), "forwarder_beat_lock_held") == 1, 60, 0.1, "beat lock"
                )
                eventually(
                    lambda: (
                        (
                            value(
                                scrape(),
                                "forwarder_schedule_runs_total",
                                **labels,
                                outcome="succeeded",
                            )
                            or 0
                        )
                        >= 1
                    ),
                    60,
                    0.2,
                    "a run",
                )
            finally:
                beat.stop()
            assert value(scrape(), "forwarder_beat_lock_held") == 0  # released as it stopped
            missed = value(scrape(), "forwarder_schedule_missed_slots_total", **labels)
            assert missed is not None
            time.sleep(3.5)  # slots pass with no beat
            beat = celery_beat(env, tmp_path / "beat2.log", name="beat2")
            try:
                eventually(
                    lambda: (
                        (value(scrape(), "forwarder_schedule_missed_slots_total", **labels) or 0)
                        >= missed + 2
                    ),
                    60,
                    0.2,
                    "missed slots counted",
                )
                assert value(scrape(), "forwarder_beat_lock_held") == 1
            finally:
                beat.stop()
            stored = core.store.get("default/ticks")
            assert stored is not None
            text = scrape()
            assert (
                value(text, "forwarder_schedule_missed_slots_total", **labels) == stored.meta.missed
            )
        finally:
            worker.stop()
        assert value(scrape(), "forwarder_workers") == 0
        # One that died without leaving (its score 40 s old) is not counted, and is pruned.
        core.client.zadd(core.keys.workers, {"gone@host": time.time() - 40})
        assert value(scrape(), "forwarder_workers") == 0
        assert core.client.zcard(core.keys.workers) == 0
    core.close()


# -- queue lengths ---------------------------------------------------------------------------


def test_queue_length_counts_every_priority_list_under_the_prefix(
    redis_url: str, tmp_path: Path
) -> None:
    prefix = "metrics-q:"
    core = Core.from_settings(Settings(redis_url=redis_url, key_prefix=prefix))
    # A schedule naming a queue of its own makes that queue known.
    core.store.upsert(
        Entry(
            name="default/other",
            task="forwarder.ping",
            schedule={"every": 60},
            queue="other",
            suspend=True,
        )
    )
    sent = {"default": 0, "other": 0}
    for priority, count in ((None, 3), (0, 1), (2, 2), (5, 4), (9, 2)):
        for _ in range(count):
            for queue in sent:
                core.app.send_task("forwarder.ping", queue=queue, priority=priority)
                sent[queue] += 1
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    # (The entry's hash, metrics-q:default/other, matches the pattern too.)
    lists = {key for key in client.scan_iter(match=f"{prefix}default*") if "/" not in key}
    # kombu split them over its priority lists, under the prefix.
    assert lists == {f"{prefix}default", f"{prefix}default\x06\x163", f"{prefix}default\x06\x169"}
    # Not Forwarder's: a list of the same name without the prefix.
    client.lpush("default", "x", "y")
    with core.app.connection_for_read() as connection:
        channel = connection.default_channel
        kombu_sizes = {queue: channel._size(queue) for queue in sent}
    assert kombu_sizes == sent
    with TestClient(
        create_app(api_settings(redis_url, key_prefix=prefix, schedules_dir=tmp_path))
    ) as api:
        text = api.get("/metrics").text
    assert series(text, "forwarder_queue_length") == {
        (("queue", "default"),): sent["default"],
        (("queue", "other"),): sent["other"],
    }
    client.close()
    core.close()


def test_schedule_series_parse_as_prometheus_text(redis_url: str, tmp_path: Path) -> None:
    """The per-schedule series are written as text by hand: Prometheus' own parser reads
    them back, escaped label values included, with their types."""
    core = Core.from_settings(Settings(redis_url=redis_url))
    task = 'odd"task\\with\nnewline'
    core.store.upsert(Entry(name="default/odd", task=task, schedule={"cron": "0 * * * *"}))
    with TestClient(create_app(api_settings(redis_url, schedules_dir=tmp_path))) as api:
        text = api.get("/metrics").text
    core.close()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    kinds = {
        "forwarder_schedule_runs": "counter",
        "forwarder_schedule_missed_slots": "counter",
        "forwarder_schedule_excluded_slots": "counter",
        "forwarder_schedule_consecutive_failures": "gauge",
        "forwarder_schedule_next_run_timestamp_seconds": "gauge",
        "forwarder_schedule_period_seconds": "gauge",
        "forwarder_schedule_suspended": "gauge",
    }
    for name, kind in kinds.items():
        assert families[name].type == kind, name
    (period,) = families["forwarder_schedule_period_seconds"].samples
    assert period.labels == {"namespace": "default", "schedule": "odd", "task": task}
    assert period.value == 3600
    outcomes = {s.labels["outcome"]: s.value for s in families["forwarder_schedule_runs"].samples}
    assert outcomes == {"succeeded": 0, "failed": 0, "skipped": 0}


def test_without_redis_the_scrape_says_so_and_serves_the_api_own(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    with TestClient(create_app(api_settings(closed, schedules_dir=tmp_path))) as api:
        response = api.get("/metrics")
    assert response.status_code == 200
    assert value(response.text, "forwarder_api_redis_up") == 0
    assert "forwarder_api_requests_total" in response.text
    assert "forwarder_schedule" not in response.text
    assert "forwarder_workers" not in response.text
