"""A run reaching a final state is announced on its channel with the final record itself, so
a waiter (the api's long poll) needs no read of its own; other transitions announce nothing."""

from __future__ import annotations

import json
from typing import Any

import redis
from forwarder_worker import Core
from forwarder_worker.runs.records import RunRecord, announced_record
from support.broker_messages import subscribed

PREFIX = "forwarder:"


def _announcements(pubsub: Any) -> list[str]:
    out = []
    while (message := pubsub.get_message(timeout=0.3)) is not None:
        if message["type"] == "pmessage":
            out.append(message["data"])
    return out


def test_the_final_transition_announces_the_whole_final_record(
    core: Core, rclient: redis.Redis
) -> None:
    runs = core.runs
    with subscribed(rclient, f"{PREFIX}run:*") as pubsub:
        runs.queued("a1", "forwarder.ping", source="api", args=[1, "ü"], kwargs={"k": "/x"})
        runs.transition("a1", "STARTED", worker="w@h")
        assert _announcements(pubsub) == []  # nothing final yet
        runs.transition("a1", "SUCCESS", result=json.dumps({"pong": 'é"\n'}), finished=1.5)
        (payload,) = _announcements(pubsub)
        # The payload is the hash, field for field, as a reader would find it.
        assert json.loads(payload) == rclient.hgetall("forwarder:run:a1")
        record = announced_record(payload)
        assert record == runs.get("a1")
        assert record is not None and record.state == "SUCCESS" and record.worker == "w@h"
        # The same final state again announces nothing; a late non-final one neither.
        runs.transition("a1", "SUCCESS")
        runs.transition("a1", "RECEIVED")
        assert _announcements(pubsub) == []
        # Every final state is announced (a failure with its error, a skipped firing).
        runs.transition("a2", "FAILURE", task="t", error_type="E", error="boom")
        runs.write(runs.skipped_write("a3", "t", schedule="ns/s", slot=1.0, reason="Forbid"))
        finals = [announced_record(p) for p in _announcements(pubsub)]
        assert [(r.id, r.state) for r in finals if r] == [("a2", "FAILURE"), ("a3", "SKIPPED")]
        assert finals[0] is not None and finals[0].error == "boom"


def test_an_announcement_without_a_record_is_not_taken_for_one() -> None:
    # What writers before this change published: the bare state.
    for payload in ("SUCCESS", "FAILURE", "", "{not json", "[1]", '{"state": "SUCCESS"}'):
        assert announced_record(payload) is None
    record = announced_record('{"id": "x", "task": "t", "state": "SUCCESS", "retries": "2"}')
    assert record == RunRecord(id="x", task="t", state="SUCCESS", retries=2)
