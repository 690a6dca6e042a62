"""The local folder source in-process: what it reports, that a steady state logs nothing, and
that a YAML file's missedRunPolicy holds across a real beat outage."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import pytest
import redis
from forwarder_operator.folder import FolderSource
from forwarder_worker import Core
from support.processes import celery_beat, celery_worker, eventually, forwarder_env, running

PING = """\
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata: {name: steady}
spec:
  task: forwarder.ping
  schedule: {every: 10s}
"""


def test_a_firing_does_not_make_the_source_report_again(
    tmp_path: Path, core: Core, rclient: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "steady.yaml").write_text(PING)
    store = core.store
    source = FolderSource(tmp_path, store, known_tasks={"forwarder.ping"})
    with caplog.at_level(logging.INFO, logger="forwarder.folder"):
        assert source.sync() == {"default/steady": "Scheduled"}
        # Beat fired it: the next due time moved, nothing the user declared did.
        rclient.zincrby("forwarder::schedule", 10, "forwarder:default/steady")
        source.sync()
        reports = [r.getMessage() for r in caplog.records if "default/steady" in r.getMessage()]
        assert len(reports) == 1
        (tmp_path / "steady.yaml").write_text(PING.replace("10s", "20s"))
        source.sync()
    reports = [r.getMessage() for r in caplog.records if "default/steady" in r.getMessage()]
    assert len(reports) == 2
    assert "every 20s" in reports[1]


@pytest.mark.slow
def test_missed_run_policies_of_yaml_files_after_a_real_beat_outage(
    tmp_path: Path, redis_url: str, core: Core, logs: Path
) -> None:
    """missedRunPolicy from YAML files, as local mode reads them (the real folder source, a
    real beat and worker): across an outage of the only beat, Latest fires the latest missed
    slot and counts the others missed, All fires every one of them. (Skip differs from Latest
    only for a slot older than beat's lock timeout, which an every-1s schedule's latest never
    is: tests/scheduler/test_sched_timetable.py drives it with its own clock.)"""
    folder = tmp_path / "schedules"
    folder.mkdir()
    policies = ("Latest", "All")
    for policy in policies:
        (folder / f"{policy.lower()}.yaml").write_text(
            PING.replace("steady", f"outage-{policy.lower()}").replace("10s", "1s")
            + f"  missedRunPolicy: {policy}\n"
        )
    source = FolderSource(folder, core.store, known_tasks={"forwarder.ping"})
    assert source.sync() == {f"default/outage-{p.lower()}": "Scheduled" for p in policies}
    env = forwarder_env(redis_url)

    def slots(policy: str) -> list[float]:
        runs = core.runs.recent(schedule=f"default/outage-{policy.lower()}", limit=1000)
        return sorted(r.slot for r in runs if r.state != "SKIPPED" and r.slot)

    with running(celery_worker(env, logs / "worker.log")):
        with running(celery_beat(env, logs / "beat-1.log", "beat-1")):
            for policy in policies:
                eventually(lambda p=policy: len(slots(p)) >= 2, 40, 0.2, f"{policy} fires")
        stopped = time.time()
        time.sleep(5)  # about five slots of each schedule pass with no beat
        with running(celery_beat(env, logs / "beat-2.log", "beat-2")):
            for policy in policies:
                eventually(
                    lambda p=policy: len([s for s in slots(p) if s > stopped + 7]) >= 2,
                    40,
                    0.2,
                    f"{policy} fires again",
                )
    gaps = {p: [b - a for a, b in itertools.pairwise(slots(p))] for p in policies}
    assert set(gaps["All"]) == {1.0}, slots("All")  # every slot, none lost
    assert max(gaps["Latest"]) >= 3, slots("Latest")  # only the outage's latest slot fired
    meta = {p: core.store.get(f"default/outage-{p.lower()}").meta for p in policies}  # type: ignore[union-attr]
    assert meta["All"].missed == 0
    assert meta["Latest"].missed >= max(gaps["Latest"]) - 1
