"""concurrencyPolicy Forbid decides from the run records, and neither a run whose worker
died mid-task (STARTED past the hard time limit) nor a trigger whose sender died mid-way
(a run recorded as queued, never sent) blocks the schedule forever."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from forwarder_worker import Core
from forwarder_worker.dispatch.dispatcher import Dispatcher, Firing
from forwarder_worker.runs.records import RunLog
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.store import Entry
from forwarder_worker.settings import Settings
from support.crash import killed_at_next_publish

NAME = "team/nightly"


@pytest.fixture
def dispatcher(redis_url: str) -> Iterator[Dispatcher]:
    core = Core.from_settings(Settings(redis_url=redis_url, task_time_limit=60))
    # Stored: a schedule's run keys (its active set, history) are kept only while it exists.
    core.store.upsert(forbid_entry())
    yield core.dispatcher
    core.close()


def forbid_entry() -> Entry:
    spec = parse_spec(
        {"task": "forwarder.ping", "schedule": {"every": "1m"}, "concurrencyPolicy": "Forbid"}
    )
    return Entry.from_spec(NAME, spec, uid="u", generation=1)


def started_run(runs: RunLog, run_id: str, started: float) -> None:
    runs.queued(run_id, "forwarder.ping", source="schedule", schedule=NAME, slot=started)
    runs.transition(run_id, "STARTED", started=started)


def test_forbid_skips_while_a_run_is_active(dispatcher: Dispatcher) -> None:
    started_run(dispatcher.runs, "running-now", time.time())
    (outcome,) = dispatcher.fire([Firing(forbid_entry(), time.time())])
    assert not outcome.sent
    assert outcome.reason is not None
    assert "Forbid: run running-now is active" in outcome.reason
    record = dispatcher.runs.get(outcome.run_id)
    assert record is not None
    assert record.state == "SKIPPED"


def test_a_run_started_past_the_time_limit_no_longer_blocks(
    dispatcher: Dispatcher, rclient: redis.Redis
) -> None:
    # Its worker was killed: no final signal will come until the broker redelivers it.
    started_run(dispatcher.runs, "lost-worker", time.time() - 600)
    (outcome,) = dispatcher.fire([Firing(forbid_entry(), time.time())])
    assert outcome.sent
    assert rclient.llen("forwarder:default") == 1  # the message is on the queue


def test_a_trigger_whose_sender_dies_after_recording_it_is_sent(
    dispatcher: Dispatcher, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator (or api) dies at its first publish pipeline after recording the run: the
    # record and the message went to Redis together, so the run is not left queued without a
    # message (which would make Forbid skip every slot until the record expired).
    with killed_at_next_publish(monkeypatch):
        dispatcher.fire([Firing(forbid_entry(), time.time(), "trigger")])
    (record,) = dispatcher.runs.recent(schedule=NAME)
    assert record.state == "PENDING"
    (raw,) = rclient.lrange("forwarder:default", 0, -1)
    assert record.id in raw
