"""The workers' result backend records a run's STARTED with Celery's STARTED state and its
SUCCESS in the result's own round trip, so whoever hears the result finds the record final;
if that write fails, the state is stored as Celery stores it and the run is recorded as
before (a STARTED at once, a SUCCESS by the task_success receiver). It stores those two
states as Celery's own backend does, never over a stored SUCCESS, and fails when Celery's
store changes (the backend re-implements it)."""

from __future__ import annotations

import hashlib
import inspect
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.app.task import Context
from celery.backends.base import BaseKeyValueStoreBackend
from celery.backends.redis import RedisBackend
from forwarder_worker import Core
from forwarder_worker.core import require_core
from forwarder_worker.recording.result_backend import RecordingRedisBackend
from forwarder_worker.runs.records import RunLog
from forwarder_worker.settings import Settings
from support.broker_messages import subscribed
from support.processes import Proc, celery_worker, eventually, forwarder_env, running

PREFIX = "forwarder:"


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = Core.from_settings(
        Settings(redis_url=redis_url, task_modules=["support.sample_tasks"])
    ).app
    yield app
    app.close()


@pytest.fixture
def worker(redis_url: str, logs: Path) -> Iterator[Proc]:
    with running(celery_worker(forwarder_env(redis_url), logs / "worker.log")) as (proc,):
        eventually(lambda: " ready." in proc.output(), 60, message="worker ready")
        yield proc


def test_a_success_is_recorded_with_its_result(app: Celery, rclient: redis.Redis) -> None:
    backend = app.backend
    assert isinstance(backend, RecordingRedisBackend)
    runs = require_core(app).runs
    run_id = str(uuid.uuid4())
    runs.queued(run_id, "forwarder.ping", source="api")
    backend.store_result(run_id, {"pong": True}, "SUCCESS", request=Context(task="forwarder.ping"))
    record = runs.get(run_id)
    assert record is not None and record.state == "SUCCESS"
    assert json.loads(record.result or "") == {"pong": True} and record.finished
    assert runs.recorded_with_result(run_id) and not runs.recorded_with_result(run_id)  # once
    assert app.AsyncResult(run_id).result == {"pong": True}
    # Other states are the receivers' to record.
    other = str(uuid.uuid4())
    backend.store_result(other, None, "STARTED", request=Context(task="forwarder.ping"))
    assert runs.get(other) is None and not runs.recorded_with_result(other)


def start(runs: RunLog, run_id: str) -> None:
    """What the task_prerun receiver does when Celery stores STARTED next."""
    runs.defer(
        runs.build(run_id, "STARTED", task="forwarder.ping", started=time.time(), worker="w")
    )


def test_a_start_is_recorded_with_celerys_started_state(app: Celery, rclient: redis.Redis) -> None:
    backend, runs = app.backend, require_core(app).runs
    request = Context(task="forwarder.ping")
    run_id = str(uuid.uuid4())
    runs.queued(run_id, "forwarder.ping", source="api")
    start(runs, run_id)
    backend.store_result(run_id, {"pid": 1}, "STARTED", request=request)
    record = runs.get(run_id)
    assert record is not None and record.state == "STARTED" and record.worker == "w"
    assert record.started and runs.take_deferred(run_id) is None  # sent, once
    assert app.AsyncResult(run_id).state == "STARTED"
    # Redis lost its scripts (a restart): the state is stored and the start still recorded.
    rclient.script_flush()
    again = str(uuid.uuid4())
    runs.queued(again, "forwarder.ping", source="api")
    start(runs, again)
    backend.store_result(again, {"pid": 1}, "STARTED", request=request)
    record = runs.get(again)
    assert record is not None and record.state == "STARTED" and record.started
    assert app.AsyncResult(again).state == "STARTED"


def test_a_stored_success_is_never_overwritten(app: Celery, rclient: redis.Redis) -> None:
    # Celery's rule, which the backend's script keeps: a lost worker's late run of a task that
    # succeeded elsewhere cannot overwrite its result.
    backend, runs = app.backend, require_core(app).runs
    request = Context(task="forwarder.ping")
    run_id = str(uuid.uuid4())
    runs.queued(run_id, "forwarder.ping", source="api")
    backend.store_result(run_id, 1, "SUCCESS", request=request)
    assert runs.recorded_with_result(run_id)
    start(runs, run_id)
    backend.store_result(run_id, {"pid": 2}, "STARTED", request=request)
    backend.store_result(run_id, 2, "SUCCESS", request=request)
    result = app.AsyncResult(run_id)
    assert (result.state, result.result) == ("SUCCESS", 1)
    # Nothing of theirs was written with it: the STARTED waits in the run log (the run's next
    # transition would write it), the second SUCCESS is left to its receiver.
    assert runs.take_deferred(run_id) is not None
    assert not runs.recorded_with_result(run_id)
    record = runs.get(run_id)
    assert record is not None and record.state == "SUCCESS" and record.result == "1"


def test_states_are_stored_as_celerys_own_backend_stores_them(
    app: Celery, redis_url: str, rclient: redis.Redis
) -> None:
    plain = RedisBackend(app=app, url=redis_url)
    runs = require_core(app).runs
    request = Context(task="forwarder.ping", args=[1], kwargs={"a": 2}, hostname="w")
    stored: dict[str, dict[str, object]] = {}
    for side, backend in (("plain", plain), ("ours", app.backend)):
        for state, result in (("STARTED", {"pid": 1}), ("SUCCESS", {"pong": True})):
            run_id = str(uuid.uuid4())
            runs.queued(run_id, "forwarder.ping", source="api")
            if state == "STARTED":
                start(runs, run_id)
            backend.store_result(run_id, result, state, request=request)
            meta = json.loads(rclient.get(f"{PREFIX}celery-task-meta-{run_id}") or "")
            assert meta.pop("task_id") == run_id
            meta.pop("date_done")  # a time, or None before the end
            stored[f"{side} {state}"] = meta
    assert stored["ours STARTED"] == stored["plain STARTED"]
    assert stored["ours SUCCESS"] == stored["plain SUCCESS"]
    # Celery's own store, which ours re-implements for these two states (with its check of
    # the stored state moved into one script). If this fails, Celery changed it: compare the
    # new source with RecordingRedisBackend._store_result, then update the digest.
    source = inspect.getsource(BaseKeyValueStoreBackend._store_result)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == "c0214af4c66e2999"


def test_a_start_nobody_sent_is_written_before_the_runs_next_transition(
    app: Celery, rclient: redis.Redis
) -> None:
    runs = require_core(app).runs
    run_id = str(uuid.uuid4())
    runs.queued(run_id, "forwarder.ping", source="api")
    start(runs, run_id)  # Celery's STARTED never stored (its store failed, say)
    runs.transition(run_id, "FAILURE", task="forwarder.ping", finished=time.time())
    record = runs.get(run_id)
    assert record is not None and record.state == "FAILURE"
    assert record.started and record.worker == "w"


def test_when_the_record_cannot_be_written_the_result_still_is(
    app: Celery, rclient: redis.Redis
) -> None:
    run_id = str(uuid.uuid4())
    rclient.set(f"{PREFIX}run:{run_id}", "not a hash")  # the transition script fails on it
    app.backend.store_result(run_id, 7, "SUCCESS", request=Context(task="forwarder.ping"))
    assert app.AsyncResult(run_id).result == 7
    assert not require_core(app).runs.recorded_with_result(run_id)  # the receiver writes it


def test_whoever_hears_a_result_finds_the_run_final(
    worker: Proc, app: Celery, rclient: redis.Redis
) -> None:
    runs = require_core(app).runs
    with subscribed(rclient, f"{PREFIX}celery-task-meta-*") as pubsub:
        ids = []
        for _ in range(5):
            run_id = str(uuid.uuid4())
            runs.queued(run_id, "forwarder.ping", source="api")
            app.send_task("forwarder.ping", task_id=run_id)
            ids.append(run_id)
        heard: dict[str, str | None] = {}
        started: dict[str, str | None] = {}
        deadline = time.monotonic() + 60
        while len(heard) < len(ids) and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message is None or message["type"] != "pmessage":
                continue
            meta = json.loads(message["data"])
            if meta["status"] == "STARTED":
                # Written in the same transaction as Celery's STARTED state.
                record = runs.get(meta["task_id"])
                started[meta["task_id"]] = record.state if record else None
            if meta["status"] == "SUCCESS":
                # Read at once: the record was written in the same transaction.
                record = runs.get(meta["task_id"])
                heard[meta["task_id"]] = record.state if record else None
        assert heard == dict.fromkeys(ids, "SUCCESS")
        assert set(started) == set(ids)
        assert all(state in ("STARTED", "SUCCESS") for state in started.values()), started
        # Recorded once: the receiver wrote nothing more (one final transition, one count).
        for run_id in ids:
            record = runs.get(run_id)
            assert record is not None and record.worker and record.started
