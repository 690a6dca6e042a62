"""Beat's prebuilt task messages (forwarder_worker.dispatch.messages) are Celery's own.

For the same firings, the messages and task-sent events our fast path publishes are compared
field by field with what ``send_task`` publishes (the Dispatcher with ``prebuilt=False``),
as raw JSON read back from Redis: only delivery tags, timestamps and the clock differ, and
times computed at publish time (eta, the AMQP expiration) differ by the time between the two
publishes. Then a real worker runs prebuilt messages (success, retry, failure, revoke by id,
run records with the schedule headers), and Celery's event state (what Flower shows) sees them
sent and finished. Anything the fast path does not mirror goes through ``send_task``. The
same holds for the messages beat captures and puts on the queues from its claim script.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
import redis
from celery import Celery, signals
from forwarder_worker import Core
from forwarder_worker.beat.scheduler import ForwarderScheduler
from forwarder_worker.core import require_core
from forwarder_worker.dispatch.dispatcher import Dispatcher, Firing
from forwarder_worker.dispatch.messages import TaskMessages, uuid4_strings
from forwarder_worker.runs.records import RunRecord
from forwarder_worker.schedules.store import Entry
from forwarder_worker.settings import Settings
from support.broker_messages import queued, raw_events
from support.processes import eventually
from support.scheduler_harness import PREFIX, TASK_MODULES, Harness

Send = tuple[Firing, str, float, float | None]


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    core = Core.from_settings(Settings(redis_url=redis_url, task_modules=TASK_MODULES.split(",")))
    app = core.app
    # As in beat and the worker: task modules imported, tasks bound (with their time limits).
    app.loader.import_default_modules()
    app.finalize(auto=True)
    yield app
    core.close()


def dispatcher(app: Celery, *, prebuilt: bool) -> Dispatcher:
    """The app's dispatcher, publishing prebuilt messages or through ``send_task``."""
    built = require_core(app).dispatcher
    built.prebuilt = prebuilt
    return built


def entries() -> list[Entry]:
    """Firings of every shape beat sends: registered and unknown tasks, empty, nested and
    long arguments, priorities, other queues, a time-limited built-in task, a schedule's own
    time limit and retry policy."""
    return [
        Entry(name="m/plain", task="forwarder.ping", schedule={"every": 60}),
        Entry(
            name="m/args",
            task="tests.sleep",
            schedule={"every": 60},
            args=[0.1],
            kwargs={},
            uid="uid-1",
        ),
        Entry(
            name="m/nested",
            task="forwarder.http",
            schedule={"every": 60},
            kwargs={"url": "http://x/ü", "body": {"a": [1, 2.5, None, True]}},
            priority=7,
        ),
        Entry(
            name="m/other-queue",
            task="remote.unknown",
            schedule={"every": 60},
            args=["x" * 3000, {"k": list(range(50))}],
            queue="elsewhere",
            priority=0,
        ),
        Entry(name="m/urgent", task="tests.fail", schedule={"every": 60}, priority=9),
        Entry(
            name="m/retried",
            task="tests.fail_first",
            schedule={"every": 60},
            retries={"limit": 2, "backoff": 1, "maxBackoff": 4},
            timeout=30,
        ),
    ]


def sends_for(now: float) -> list[Send]:
    """One firing per entry; every other one jittered (eta) and with a starting deadline."""
    out: list[Send] = []
    for i, entry in enumerate(entries()):
        delay = 2.5 if i % 2 else 0.0
        expires = now + 120 + delay if i % 2 else None
        out.append((Firing(entry, now - 0.25), str(uuid.uuid4()), delay, expires))
    return out


def publish(app: Celery, client: redis.Redis, sends: list[Send], *, prebuilt: bool) -> Any:
    with raw_events(client, PREFIX) as events:
        dispatcher(app, prebuilt=prebuilt).publish(sends, first_flush=2)
    return queued(client, PREFIX), events


def capture(app: Celery, client: redis.Redis, sends: list[Send]) -> Any:
    """What beat's claim puts on the queues (the captured LPUSHes, run here as the claim
    script runs them), and the held events it then flushes."""
    with raw_events(client, PREFIX) as events:
        d = dispatcher(app, prebuilt=True)
        with app.producer_or_acquire() as producer:
            pushes, built = d.capture(producer, sends)
            # Built whole (MessageBatch.payload), not through kombu's publish: every route
            # has its Redis list worked out.
            assert built is not None and built.routes
            assert all(r is not None and r.key is not None for r in built.routes.values())
            lists = [k for k in client.keys(f"{PREFIX}*") if client.type(k) == "list"]
            assert lists == [], "capturing sent a message"
            for push in pushes:
                assert push is not None
                for key, payload in push:
                    client.lpush(key, payload)
            d.publish([], producer=producer, built=built)
    return queued(client, PREFIX), events


def normalized(message: dict[str, Any]) -> dict[str, Any]:
    """A message without its random delivery tag and with publish-time values set aside."""
    out = json.loads(json.dumps(message))
    props, headers = out["properties"], out["headers"]
    del props["delivery_tag"]
    out["eta"] = headers.pop("eta")
    out["expiration"] = props.pop("expiration", None)
    return out


def close_times(a: dict[str, Any], b: dict[str, Any]) -> None:
    if a["eta"] is None or b["eta"] is None:
        assert a["eta"] == b["eta"]
    else:
        gap = datetime.fromisoformat(a["eta"]) - datetime.fromisoformat(b["eta"])
        assert abs(gap.total_seconds()) < 5
    if a["expiration"] is None or b["expiration"] is None:
        assert a["expiration"] == b["expiration"]
    else:
        assert abs(int(a["expiration"]) - int(b["expiration"])) < 5000


@pytest.mark.parametrize("path", ["published", "captured"])
def test_prebuilt_messages_equal_what_send_task_publishes(
    app: Celery, rclient: redis.Redis, path: str
) -> None:
    sends = sends_for(time.time())
    if path == "published":
        ours, our_events = publish(app, rclient, sends, prebuilt=True)
    else:
        ours, our_events = capture(app, rclient, sends)
    theirs, their_events = publish(app, rclient, sends, prebuilt=False)  # same task ids

    assert sorted(ours) == sorted(theirs) == sorted(run_id for _, run_id, *_ in sends)
    for run_id in ours:
        mine, reference = normalized(ours[run_id]), normalized(theirs[run_id])
        close_times(mine, reference)
        del mine["eta"], mine["expiration"], reference["eta"], reference["expiration"]
        assert mine == reference, run_id
    # The shapes covered: priorities land in kombu's priority lists, eta, expiry, limits.
    assert {m["redis"]["priority_step"] for m in ours.values()} == {"", "6", "9"}
    assert ours[sends[3][1]]["redis"]["queue"] == "elsewhere"
    assert ours[sends[1][1]]["headers"]["eta"] is not None
    assert ours[sends[1][1]]["properties"]["expiration"] is not None
    assert ours[sends[0][1]]["headers"]["timelimit"] == [600, 540]
    # A schedule's timeoutSeconds (soft, and hard 5 s later) and retry policy.
    assert ours[sends[5][1]]["headers"]["timelimit"] == [35, 30]
    assert ours[sends[5][1]]["headers"]["forwarder_retry"] == {
        "limit": 2,
        "backoff": 1,
        "maxBackoff": 4,
    }

    # Task-sent events: Celery's own, one per message (send_task) or grouped (ours).
    assert [channel for channel, _ in their_events] == ["task.sent"] * len(sends)
    assert {channel for channel, _ in our_events} == {"task.multi"}
    grouped = [event for _, envelope in our_events for event in envelope["body"]]
    single = [envelope["body"] for _, envelope in their_events]
    assert [e["uuid"] for e in grouped] == [e["uuid"] for e in single]
    for mine, reference in zip(grouped, single, strict=True):
        assert mine.keys() == reference.keys()
        volatile = ("timestamp", "clock", "eta", "expires")
        for key in mine.keys() - volatile:
            assert mine[key] == reference[key], key
        assert mine["expires"] == reference["expires"]
        assert (mine["eta"] is None) == (reference["eta"] is None)
    envelope_keys = ("content-type", "content-encoding", "headers")
    for key in envelope_keys:
        assert our_events[0][1][key] == their_events[0][1][key]
    mine_props = {k: v for k, v in our_events[0][1]["properties"].items() if k != "delivery_tag"}
    their_props = {k: v for k, v in their_events[0][1]["properties"].items() if k != "delivery_tag"}
    their_props["delivery_info"]["routing_key"] = "task.multi"
    assert mine_props == their_props


def test_what_the_fast_path_does_not_mirror_goes_through_send_task(
    app: Celery, rclient: redis.Redis
) -> None:
    # A task whose own options ask for compression: only send_task knows how.
    @app.task(name="tests.zipped", compression="zlib", shared=False)
    def zipped() -> None: ...

    now = time.time()
    zipped_send = (Firing(Entry(name="m/zip", task="tests.zipped", schedule={"every": 9}), now),)
    plain = (Firing(entries()[0], now),)
    sends: list[Send] = [(*zipped_send, "zipped-1", 0.0, None), (*plain, "plain-1", 0.0, None)]
    messages, _ = publish(app, rclient, sends, prebuilt=True)
    assert messages["zipped-1"]["headers"]["compression"] == "application/x-gzip"
    assert "compression" not in messages["plain-1"]["headers"]

    # A before_task_publish receiver (tracing, say) must see every message: all of them
    # then go through send_task.
    seen: list[str] = []

    def on_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
        seen.append((headers or {}).get("id", ""))

    signals.before_task_publish.connect(on_publish, weak=False)
    try:
        with app.producer_or_acquire() as producer:
            assert TaskMessages(app).start(producer) is None
        more: list[Send] = [(*plain, f"traced-{i}", 0.0, None) for i in range(3)]
        messages, events = publish(app, rclient, more, prebuilt=True)
    finally:
        signals.before_task_publish.disconnect(on_publish)
    assert seen == ["traced-0", "traced-1", "traced-2"]
    assert sorted(messages) == seen
    assert [channel for channel, _ in events] == ["task.sent"] * 3


def test_batched_random_ids_are_uuid4_strings() -> None:
    ids = uuid4_strings(1000)
    assert len(set(ids)) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


@contextmanager
def task_states(app: Celery) -> Iterator[Any]:
    """Celery's event state (what Flower's task view is built on), fed by a real receiver."""
    state = app.events.State()
    probes: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "test-probe":
            probes.append(event["type"])
        state.event(event)

    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": on_event})
        thread = threading.Thread(
            target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False),
            daemon=True,
        )
        thread.start()
        with app.events.default_dispatcher() as probe:
            eventually(lambda: probe.send("test-probe") or probes, 20, 0.2, "receiver ready")
        try:
            yield state
        finally:
            receiver.should_stop = True
            thread.join(10)


def test_a_worker_runs_prebuilt_messages_and_flower_sees_them(shared: Harness) -> None:
    app = Core.from_settings(
        Settings(redis_url=shared.url, task_modules=TASK_MODULES.split(","))
    ).app
    app.loader.import_default_modules()
    fire = dispatcher(app, prebuilt=True)
    with app.producer_or_acquire() as producer:
        assert TaskMessages(app).unusual(producer) is None  # these go the fast way

    def entry(name: str, task: str, **fields: Any) -> Entry:
        return Entry(name=f"fast/{name}", task=task, schedule={"every": 3600}, **fields)

    firings = [
        Firing(entry("ping", "forwarder.ping", priority=5), time.time()),
        Firing(entry("flaky", "tests.flaky", kwargs={"failures": 1}), time.time()),
        Firing(entry("fail", "tests.fail", args=["no luck"]), time.time()),
        Firing(entry("slow", "tests.sleep", args=[60]), time.time()),
    ]
    with task_states(app) as state:
        outcomes = fire.fire(firings)
        ids = {o.firing.entry.name.removeprefix("fast/"): o.run_id for o in outcomes}
        assert all(o.sent for o in outcomes)

        def record(name: str, state: str) -> RunRecord | None:
            found = shared.runs.get(ids[name])
            return found if found is not None and found.state == state else None

        # Revoke by id reaches the running task.
        eventually(lambda: record("slow", "STARTED"), 60, message="slow task started")
        app.control.revoke(ids["slow"], terminate=True, signal="SIGTERM")

        ping = eventually(lambda: record("ping", "SUCCESS"), 60, message="ping ran")
        flaky = eventually(lambda: record("flaky", "SUCCESS"), 60, message="flaky retried")
        failed = eventually(lambda: record("fail", "FAILURE"), 60, message="fail failed")
        revoked = eventually(lambda: record("slow", "REVOKED"), 60, message="slow revoked")
        assert ping.schedule == "fast/ping"
        assert ping.slot == pytest.approx(firings[0].slot)
        assert flaky.retries == 1
        assert failed.error_type == "ValueError"
        assert failed.error == "no luck"
        assert revoked.reason == "terminated"

        def seen_by_flower() -> dict[str, Any] | None:
            tasks = {t.uuid: t for t in state.tasks.values()}
            ready = all(
                tasks.get(i) and tasks[i].sent and tasks[i].state in ("SUCCESS", "FAILURE")
                for k, i in ids.items()
                if k != "slow"
            )
            return tasks if ready else None

        tasks = eventually(seen_by_flower, 30, 0.2, "task events seen")
        assert tasks[ids["ping"]].name == "forwarder.ping"
        assert tasks[ids["ping"]].state == "SUCCESS"
        assert tasks[ids["fail"]].args == "['no luck']"
        assert tasks[ids["fail"]].state == "FAILURE"
        assert tasks[ids["slow"]].sent
    app.close()


def test_a_publish_pipeline_that_redis_refuses_does_not_end_beat(
    redis_url: str, rclient: redis.Redis
) -> None:
    settings = Settings(redis_url=redis_url, beat_lock_timeout=2)
    beat = ForwarderScheduler(Core.from_settings(settings).app)
    # Messages through send_task, which beat publishes after its claim (as it does any
    # message it cannot build ahead); the others go out with the claim itself.
    beat.dispatcher.prebuilt = False
    store = beat.store
    try:
        now = time.time()
        for i in range(3):
            store.upsert(Entry(name=f"refused/e{i}", task="forwarder.ping", schedule={"at": now}))
        # Redis refuses the messages (as when it fails mid-pipeline): kombu raises
        # BatchPublishError, which Celery's beat loop would not survive.
        rclient.execute_command("ACL", "SETUSER", "default", "-lpush")
        try:
            assert beat.tick() >= 0.5  # backing off, not raised
        finally:
            rclient.execute_command("ACL", "SETUSER", "default", "+lpush")
        assert rclient.llen(f"{PREFIX}default") == 0
        store.upsert(Entry(name="refused/later", task="forwarder.ping", schedule={"at": now}))
        # Beat carries on (once its own lock lapses, as after any Redis error).
        eventually(
            lambda: beat.tick() is not None and rclient.llen(f"{PREFIX}default") == 1, 20, 0.1
        )
        (message,) = queued(rclient, PREFIX).values()
        assert message["headers"]["forwarder_schedule"] == "refused/later"
    finally:
        beat.close()
