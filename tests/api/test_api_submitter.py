"""The api's submit on the event loop (forwarder_api.submitter) sends what ``send_task`` sends.

For the same run, the message and task-sent event written by the submit script are compared
with those of the reference path (``Submitter.submit_blocking``: the run record, then
``send_task``), as raw JSON read back from a real Redis: only delivery tags, timestamps and
the clock differ, and times computed at send time (eta, expiry) by the time in between. The
record and the message land together, a retried script sends nothing twice, and everything
the script path does not handle still goes through ``send_task``.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import signals
from forwarder_api.models import RunRequest
from forwarder_api.services import Services
from forwarder_api.settings import ApiSettings
from support.broker_messages import queued, raw_events

PREFIX = "forwarder:"


@pytest.fixture
async def services(redis_url: str) -> AsyncIterator[Services]:
    built = Services.build(ApiSettings(redis_url=redis_url, api_tokens=["submitter-token"]))
    yield built
    await built.aclose()


def normalized(message: dict[str, Any]) -> dict[str, Any]:
    """A message without its random delivery tag and with send-time values set aside."""
    out = json.loads(json.dumps(message))
    props, headers = out["properties"], out["headers"]
    del props["delivery_tag"]
    out["eta"] = headers.pop("eta")
    out["expires"] = headers.pop("expires")
    out["expiration"] = props.pop("expiration", None)
    return out


def close(a: str | float | None, b: str | float | None, seconds: float = 5) -> None:
    """Two times within ``seconds``: ISO dates, or AMQP expirations (milliseconds)."""
    if a is None or b is None:
        assert a == b
    elif isinstance(a, str) and isinstance(b, str) and "T" in a and "T" in b:
        gap = datetime.fromisoformat(a) - datetime.fromisoformat(b)
        assert abs(gap.total_seconds()) < seconds
    else:
        assert abs(float(a) - float(b)) < seconds * 1000


async def _warm(services: Services, queue: str = "default") -> None:
    """The first submission takes the reference path (it imports the task modules and
    declares the queue); the next opens the submitter's producer and takes the script."""
    for _ in range(2):
        await services.submitter.submit("forwarder.ping", RunRequest(queue=queue))


CASES = [
    RunRequest(),
    RunRequest(args=[1, "ü", {"a": [1.5, None, True]}], kwargs={"k": "v" * 300}),
    RunRequest(queue="reports", priority=7, countdown=5, expires=600),
    RunRequest(priority=0, expires=datetime.now(UTC) + timedelta(hours=1)),
]


@pytest.mark.parametrize("run", CASES, ids=["plain", "args", "queue-priority", "expiry"])
async def test_the_script_sends_what_send_task_sends(
    services: Services, rclient: redis.Redis, run: RunRequest
) -> None:
    await _warm(services, run.queue or "default")
    queued(rclient, PREFIX)
    with raw_events(rclient, PREFIX) as ours_events:
        ours_id = await services.submitter.submit("forwarder.ping", run)
    ours = queued(rclient, PREFIX)
    with raw_events(rclient, PREFIX) as their_events:
        their_id = services.submitter.submit_blocking("forwarder.ping", run)
    theirs = queued(rclient, PREFIX)
    assert list(ours) == [ours_id] and list(theirs) == [their_id]

    mine, reference = normalized(ours[ours_id]), normalized(theirs[their_id])
    for key in ("eta", "expires", "expiration"):
        close(mine.pop(key), reference.pop(key))
    # The ids are the only other difference (id, root id, correlation id).
    assert json.loads(json.dumps(mine).replace(ours_id, their_id)) == reference
    assert mine["redis"]["queue"] == (run.queue or "default")
    assert mine["redis"]["priority_step"] == ("" if not run.priority else "6")

    # The script's task-sent event is Celery's own, grouped as workers group theirs.
    assert [channel for channel, _ in ours_events] == ["task.multi"]
    assert [channel for channel, _ in their_events] == ["task.sent"]
    (grouped,), single = ours_events[0][1]["body"], their_events[0][1]["body"]
    assert grouped.keys() == single.keys()
    for key in grouped.keys() - {"timestamp", "clock", "eta", "expires", "uuid", "root_id"}:
        assert grouped[key] == single[key], key
    assert grouped["uuid"] == grouped["root_id"] == ours_id
    close(grouped["eta"], single["eta"])
    close(grouped["expires"], single["expires"])

    # Both recorded the same run.
    runs = services.core.runs
    mine_run, their_run = runs.get(ours_id), runs.get(their_id)
    assert mine_run is not None and their_run is not None
    assert mine_run.state == their_run.state == "PENDING"
    for field in ("task", "source", "args", "kwargs"):
        assert getattr(mine_run, field) == getattr(their_run, field), field
    expiry = rclient.hget(f"forwarder:run:{ours_id}", "expires")
    if run.expires is None:
        assert expiry is None
    else:
        close(float(expiry or 0), float(rclient.hget(f"forwarder:run:{their_id}", "expires") or 0))


async def test_record_and_message_land_together_and_a_retry_sends_nothing_twice(
    services: Services, rclient: redis.Redis
) -> None:
    await _warm(services)
    queued(rclient, PREFIX)
    submitter = services.submitter
    prepared = submitter.prepare("forwarder.ping", RunRequest(args=[2]))
    assert prepared is not None
    run_id = prepared.write.run_id
    # Nothing reaches Redis until the script runs.
    assert not rclient.exists(f"{PREFIX}run:{run_id}") and not queued(rclient, PREFIX)
    # Redis runs a script whole: a worker that sees the message finds the record.
    assert await submitter.async_runs.submit(*prepared)
    record = services.core.runs.get(run_id)
    assert record is not None and record.state == "PENDING" and record.args == "[2]"
    assert list(queued(rclient, PREFIX)) == [run_id]
    # The same script again (a reply lost, the command retried): nothing is sent twice,
    # nor is a later state overwritten.
    services.core.runs.transition(run_id, "STARTED")
    assert not await submitter.async_runs.submit(*prepared)
    assert not queued(rclient, PREFIX)
    after = services.core.runs.get(run_id)
    assert after is not None and after.state == "STARTED"


async def test_what_the_script_does_not_handle_goes_through_send_task(
    services: Services, rclient: redis.Redis
) -> None:
    submitter = services.submitter

    async def path_of(run: RunRequest) -> str:
        """Which path sent ``run``: its task-sent event's kind; and it was recorded."""
        with raw_events(rclient, PREFIX) as events:
            run_id = await submitter.submit("forwarder.ping", run)
        assert list(queued(rclient, PREFIX)) == [run_id]
        assert services.core.runs.get(run_id) is not None
        (channel, _), *_ = events
        return {"task.sent": "send_task", "task.multi": "script"}[channel]

    # First use: producer closed, queue undeclared; then a new queue is declared first.
    assert await path_of(RunRequest()) == "send_task"
    assert await path_of(RunRequest()) == "script"
    assert await path_of(RunRequest(queue="fresh")) == "send_task"
    assert await path_of(RunRequest(queue="fresh")) == "script"
    # An eta, and a publish signal receiver (send_task would call it).
    eta = datetime.now(UTC) + timedelta(minutes=5)
    assert await path_of(RunRequest(eta=eta)) == "send_task"
    # An expiry written with another UTC offset (send_task keeps it); in UTC it is ours.
    paris = timezone(timedelta(hours=1))
    assert await path_of(RunRequest(expires=eta.astimezone(paris))) == "send_task"
    assert await path_of(RunRequest(expires=eta)) == "script"
    received: list[str] = []

    def receiver(headers: dict[str, Any] | None = None, **_: Any) -> None:
        received.append(str((headers or {}).get("id")))

    signals.before_task_publish.connect(receiver, weak=False)
    try:
        assert await path_of(RunRequest()) == "send_task"
        assert len(received) == 1
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert await path_of(RunRequest()) == "script"


async def test_concurrent_submissions_from_threads_and_the_loop_all_land(
    services: Services, rclient: redis.Redis
) -> None:
    await _warm(services)
    queued(rclient, PREFIX)
    ids: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: ids.append(
                services.submitter.submit_blocking("forwarder.ping", RunRequest())
            )
        )
        for _ in range(5)
    ]
    for thread in threads:
        thread.start()
    for _ in range(20):
        ids.append(await services.submitter.submit("forwarder.ping", RunRequest()))
    for thread in threads:
        thread.join()
    assert sorted(queued(rclient, PREFIX)) == sorted(ids)
    assert len(set(ids)) == 25
    assert all(uuid.UUID(i) for i in ids)
