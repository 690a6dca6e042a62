"""The local folder source in-process: what it reports, and that a steady state logs nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis
from forwarder_operator.folder import FolderSource
from forwarder_worker import Core

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
