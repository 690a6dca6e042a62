"""The run transition's cost at a run's end, against the script of an earlier commit.

``python bench/transition_cost.py [--before COMMIT] [--n N]``: the SUCCESS transition (what a
worker's result backend writes as a run ends, one EVALSHA per run) of N runs already queued
and started, with this tree's script and with ``COMMIT``'s (the script text is taken from
git), three rounds each, alternating, on one fresh Valkey. Reported per SUCCESS: the client's
wall time (noisy on a shared machine) and Redis's own time (``INFO commandstats``,
``usec_per_call`` of EVALSHA), the median of the rounds. Not part of ``bench/run.py``: it
prints, and writes nothing (bench/REPORT.md quotes it).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType

import redis
from forwarder_worker._redis import scripts as current
from forwarder_worker._redis.keys import Keys
from harness import PREFIX, REPO, redis_for

SCRIPTS = "worker/forwarder_worker/_redis/scripts.py"


def scripts_at(commit: str) -> ModuleType:
    """The scripts module as it was at ``commit``."""
    text = subprocess.run(
        ["git", "show", f"{commit}:{SCRIPTS}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "scripts_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("scripts_before", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_round(client: redis.Redis, module: ModuleType, n: int) -> tuple[float, float]:
    """Wall and Redis microseconds per SUCCESS for ``n`` runs with ``module``'s script."""
    keys = Keys(PREFIX)
    limits = module.RunLimits(ttl=3600, global_limit=10_000, schedule_limit=100)
    scripts = module.Scripts(client, keys, limits)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    now = time.time()
    # The schedule's entry exists, as in production: the transition writes a schedule's keys
    # only while it does (since the bounded-storage change).
    client.hset(keys.entry("default/x"), "definition", "{}")
    with client.pipeline(transaction=False) as pipe:
        for run_id in ids:
            fields = ["task", "forwarder.ping", "schedule", "default/x", "source", "schedule"]
            scripts.transition(module.RunWrite(run_id, "PENDING", fields), now, pipe)
            scripts.transition(
                module.RunWrite(run_id, "STARTED", ["started", repr(now)]), now, pipe
            )
        pipe.execute()
    client.config_resetstat()
    began = time.perf_counter()
    for run_id in ids:
        fields = ["finished", repr(time.time()), "result", "null"]
        scripts.transition(module.RunWrite(run_id, "SUCCESS", fields), time.time())
    wall = (time.perf_counter() - began) / n * 1e6
    return wall, float(client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", default="0b46c58", help="the commit to compare with")
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    before = scripts_at(args.before)
    with redis_for("transition-cost") as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        rounds: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
        for _ in range(3):
            rounds["before"].append(one_round(client, before, args.n))
            rounds["after"].append(one_round(client, current, args.n))
        client.close()
    for label, figures in rounds.items():
        wall = statistics.median(f[0] for f in figures)
        inside = statistics.median(f[1] for f in figures)
        print(f"{label}: {wall:.1f} us per SUCCESS (client wall), {inside:.2f} us in Redis")


if __name__ == "__main__":
    main()
