"""Stock redbeat runs against the same Redis as Forwarder (the benchmarks' baseline,
bench/redbeat_compat.py), under its own key prefix, without touching Forwarder's entries or
lock."""

from __future__ import annotations

import json
import os

from forwarder_worker.settings import Settings
from redbeat_compat import add_redbeat_entry, create_redbeat_app
from support.processes import BIN, REPO, eventually, start
from support.scheduler_harness import PREFIX, Harness


def test_stock_redbeat_fires_on_the_same_redis(harness: Harness) -> None:
    app = create_redbeat_app(Settings(redis_url=harness.url), key_prefix="redbeat-test:")
    add_redbeat_entry(app, "baseline-ping", "forwarder.ping", every=1, kwargs={"from": "redbeat"})
    env = harness.env(FORWARDER_REDBEAT_KEY_PREFIX="redbeat-test:", BENCH_MAX_INTERVAL="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "bench"), env["PYTHONPATH"]])
    beat = start(
        [
            str(BIN / "celery"),
            "-A",
            "redbeat_compat",
            "beat",
            "--loglevel=INFO",
            "-S",
            "redbeat.RedBeatScheduler",
        ],
        env,
        harness.logs / "redbeat.log",
        "redbeat",
    )
    harness.procs.append(beat)
    queue = f"{PREFIX}default"
    eventually(lambda: harness.client.llen(queue) >= 2, 30, 0.2, "redbeat fired twice")
    message = json.loads(harness.client.lindex(queue, 0))
    assert message["headers"]["task"] == "forwarder.ping"
    assert harness.client.exists("redbeat-test::lock")
    assert harness.client.zcard("redbeat-test::schedule") == 1
    # Forwarder's own schedule keys stay untouched.
    assert harness.store.names() == set()
    assert not harness.client.exists(f"{PREFIX}:lock")
