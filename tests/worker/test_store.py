"""The schedule store on a real Redis: idempotent upserts, suspend, resume, delete, listing,
and upserts decided from a read that a firing or another writer has since made stale."""

from __future__ import annotations

import json
import time

import pytest
import redis
from forwarder_worker import Core
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.store import Entry, EntryCache, ScheduleStore, UpsertResult


def make_entry(
    name: str = "team/job", uid: str = "uid-1", generation: int = 1, **spec: object
) -> Entry:
    raw: dict[str, object] = {"task": "forwarder.ping", "schedule": {"every": "30s"}}
    raw.update(spec)
    return Entry.from_spec(name, parse_spec(raw), uid=uid, generation=generation)


@pytest.fixture
def store(core: Core) -> ScheduleStore:
    return core.store


def test_upsert_creates_an_entry_in_the_redbeat_layout(
    store: ScheduleStore, rclient: redis.Redis
) -> None:
    result, due = store.upsert(make_entry(), now=1000.0)
    assert result is UpsertResult.CREATED
    assert due == 1000.0  # a new interval fires at once
    assert set(rclient.hkeys("forwarder:team/job")) == {"definition", "meta", "rev"}
    assert rclient.zscore("forwarder::schedule", "forwarder:team/job") == 1000.0
    stored = store.get("team/job")
    assert stored is not None
    assert stored.entry.uid == "uid-1"
    assert stored.entry.generation == 1


def test_the_same_spec_twice_changes_nothing(store: ScheduleStore, rclient: redis.Redis) -> None:
    store.upsert(make_entry(), now=1000.0)
    before = rclient.hgetall("forwarder:team/job")
    result, due = store.upsert(make_entry(), now=5000.0)
    assert result is UpsertResult.UNCHANGED
    assert due == 1000.0  # the next due time did not move
    assert rclient.hgetall("forwarder:team/job") == before


def test_a_stored_definition_leaves_out_the_options_at_their_defaults(
    store: ScheduleStore, rclient: redis.Redis
) -> None:
    """Redis holds every entry's definition: options a schedule does not use cost no memory,
    and the entry reads back whole."""
    entry = make_entry(kwargs={"x": 1})
    store.upsert(entry, now=1000.0)
    stored = json.loads(rclient.hget("forwarder:team/job", "definition"))
    assert "kwargs" in stored
    assert not {"args", "suspend", "deadline", "retries", "exclude_cron", "max_runs"} & set(stored)
    got = store.get("team/job")
    assert got is not None
    assert got.entry == entry


def test_an_entry_stored_with_every_field_is_unchanged_by_the_same_spec(
    store: ScheduleStore, rclient: redis.Redis
) -> None:
    """An entry written by a version that stored every field (defaults included) is the same
    entry: re-applying its spec after an upgrade is no update and moves nothing."""
    entry = make_entry()
    store.upsert(entry, now=1000.0)
    rclient.hset(
        "forwarder:team/job",
        "definition",
        json.dumps(vars(entry), sort_keys=True, separators=(",", ":")),
    )
    before = rclient.hgetall("forwarder:team/job")
    result, due = store.upsert(make_entry(), now=5000.0)
    assert result is UpsertResult.UNCHANGED
    assert due == 1000.0
    assert rclient.hgetall("forwarder:team/job") == before


def test_changing_arguments_keeps_the_due_time(store: ScheduleStore) -> None:
    store.upsert(make_entry(), now=1000.0)
    result, due = store.upsert(make_entry(generation=2, kwargs={"x": 1}), now=1010.0)
    assert result is UpsertResult.UPDATED
    assert due == 1000.0


def test_changing_the_timing_rearms(store: ScheduleStore) -> None:
    store.upsert(make_entry(schedule={"cron": "0 * * * *"}), now=1000.0)
    _, due = store.upsert(make_entry(generation=2, schedule={"cron": "30 * * * *"}), now=1000.0)
    assert due == 1800.0  # 00:30 after 00:16:40 UTC on 1970-01-01


def test_an_older_generation_never_overwrites_a_newer_one(store: ScheduleStore) -> None:
    store.upsert(make_entry(generation=3, kwargs={"v": 3}))
    result, _ = store.upsert(make_entry(generation=2, kwargs={"v": 2}))
    assert result is UpsertResult.STALE
    stored = store.get("team/job")
    assert stored is not None
    assert stored.entry.kwargs == {"v": 3}


def test_a_recreated_resource_replaces_the_entry(store: ScheduleStore) -> None:
    store.upsert(make_entry(uid="old", generation=5))
    result, _ = store.upsert(make_entry(uid="new", generation=1))
    assert result is UpsertResult.UPDATED
    stored = store.get("team/job")
    assert stored is not None
    assert stored.entry.uid == "new"


def test_an_upsert_from_a_stale_read_keeps_a_firing_in_between(
    store: ScheduleStore, rclient: redis.Redis
) -> None:
    store.upsert(make_entry(), now=1000.0)
    read = store.snapshot("team/job")
    # beat fires the 1000 slot meanwhile: meta and due score move on (as its claim does)
    rclient.hset("forwarder:team/job", "meta", '{"anchor":1000.0,"last":1000.0,"count":1}')
    rclient.zadd("forwarder::schedule", {"forwarder:team/job": 1030.0})
    result, due = store.upsert(make_entry(generation=2, kwargs={"x": 1}), current=read)
    assert result is UpsertResult.UPDATED
    assert due == 1030.0  # the firing's next slot, not the stale read's 1000
    stored = store.get("team/job")
    assert stored is not None
    assert (stored.meta.last, stored.meta.count) == (1000.0, 1)
    assert stored.entry.kwargs == {"x": 1}
    assert int(stored.rev) == int(read.rev or 0) + 1


def test_an_upsert_from_a_stale_read_never_overwrites_a_newer_write(
    store: ScheduleStore,
) -> None:
    store.upsert(make_entry(), now=1000.0)
    read = store.snapshot("team/job")
    store.upsert(make_entry(generation=3, kwargs={"v": 3}))
    result, _ = store.upsert(make_entry(generation=2, kwargs={"v": 2}), current=read)
    assert result is UpsertResult.STALE
    stored = store.get("team/job")
    assert stored is not None
    assert stored.entry.kwargs == {"v": 3}


def test_an_upsert_from_a_stale_read_recreates_a_deleted_entry(store: ScheduleStore) -> None:
    store.upsert(make_entry(), now=1000.0)
    read = store.snapshot("team/job")
    store.delete("team/job")
    result, due = store.upsert(make_entry(generation=2), now=2000.0, current=read)
    assert result is UpsertResult.CREATED
    assert due == 2000.0
    assert store.names() == {"team/job"}


def test_suspend_leaves_the_due_set_and_resume_rearms_from_now(
    store: ScheduleStore, rclient: redis.Redis
) -> None:
    # As the operator applies them: each a new generation of the spec, suspend flipped.
    store.upsert(make_entry(schedule={"every": "10s"}), now=1000.0)
    result, due = store.upsert(make_entry(generation=2, schedule={"every": "10s"}, suspend=True))
    assert result is UpsertResult.UPDATED and due is None
    assert rclient.zscore("forwarder::schedule", "forwarder:team/job") is None
    stored = store.get("team/job")
    assert stored is not None
    assert stored.entry.suspend
    assert stored.due is None
    assert "team/job" in store.names()  # still listed while suspended
    now = time.time()
    result, due = store.upsert(make_entry(generation=3, schedule={"every": "10s"}))
    assert result is UpsertResult.UPDATED and due is not None
    # Re-armed on its grid from now: no burst of the slots missed while suspended.
    assert now < due <= now + 10.0


def test_delete_removes_everything(store: ScheduleStore, rclient: redis.Redis) -> None:
    store.upsert(make_entry())
    store.note_run_now("team/job", "first")
    assert store.last_run_now("team/job") == "first"
    assert store.delete("team/job")
    assert not rclient.exists("forwarder:team/job")
    assert rclient.zscore("forwarder::schedule", "forwarder:team/job") is None
    assert store.names() == set()
    assert store.last_run_now("team/job") is None  # a namesake created later runs it again
    assert not store.delete("team/job")


def test_a_re_created_entry_never_repeats_a_rev_so_a_cached_reader_sees_its_definition(
    store: ScheduleStore,
) -> None:
    """The api's scrape keeps parsed definitions by (name, rev); an entry deleted and
    re-created with another task between two scrapes must not come back as the old one."""
    cache = EntryCache()
    store.upsert(make_entry(task="forwarder.ping"))
    (first,) = store.entries(cache)
    assert first.entry.task == "forwarder.ping"
    assert store.delete("team/job")
    store.upsert(make_entry(uid="uid-2", task="forwarder.http"))
    (second,) = store.entries(cache)
    assert second.rev != first.rev
    assert (second.entry.task, second.entry.uid) == ("forwarder.http", "uid-2")


def test_every_change_wakes_beat(store: ScheduleStore, rclient: redis.Redis) -> None:
    rclient.delete("forwarder::wake")
    store.upsert(make_entry())
    assert rclient.llen("forwarder::wake") == 1
    assert store.wait_for_change(0.5)
    assert not store.wait_for_change(0.2)


def test_entries_lists_all_by_name(store: ScheduleStore) -> None:
    store.upsert(make_entry("b/two"))
    store.upsert(make_entry("a/one", suspend=True))
    assert [s.entry.name for s in store.entries()] == ["a/one", "b/two"]


@pytest.mark.parametrize("name", ["no-namespace", "Upper/case", "ns/", "/name", "a/b/c", "a:b/c"])
def test_entry_names_are_namespace_slash_name(name: str) -> None:
    with pytest.raises(ValueError, match="is not '<namespace>/<name>'"):
        make_entry(name)
