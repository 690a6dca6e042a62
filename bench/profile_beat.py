"""Profile Forwarder's beat in-process on spread schedules (diagnosis, not a benchmark).

``python bench/profile_beat.py [--n 1000] [--spread 6] [--seconds 12]`` loads N interval
entries due ``spread`` seconds apart in total (so N / spread firings a second: N=1,000 over
6 s is the rate of N=10,000 over a minute), drives ``ForwarderScheduler.tick()`` in this
process for ``seconds`` under cProfile, with a probe popping the broker queue, and prints
the CPU per firing, the Redis round trips per pass (socket writes on every connection of the
process, the probe's excluded) and the top of the profile. ``--send-task`` publishes with
Celery's send_task per message (the path before prebuilt messages), for comparison.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
import redis.connection
from entries import load_ours
from forwarder_worker import Core
from forwarder_worker.beat.scheduler import ForwarderScheduler
from forwarder_worker.settings import Settings
from harness import QueueProbe, redis_for, summarize

_writes: dict[str, int] = {}
_ignored: set[int] = set()


def _count_round_trips() -> None:
    """Count socket writes per command name (one write is one round trip, pipelines included)."""
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        if threading.get_ident() not in _ignored:
            first = command[0] if isinstance(command, list) else command
            text = bytes(first[:60]).split(b"\r\n")
            name = text[2].decode(errors="replace").upper() if len(text) > 2 else "?"
            _writes[name] = _writes.get(name, 0) + 1
        original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=6.0)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--no-profile", action="store_true", help="only CPU and round trips")
    parser.add_argument(
        "--send-task",
        action="store_true",
        help="publish with send_task per message instead of prebuilt messages",
    )
    args = parser.parse_args()
    _count_round_trips()
    with redis_for("profile-beat") as url:
        t0 = time.time() + 3 + args.n * 0.002
        every = max(1, round(args.spread))
        load_ours(url, range(args.n), every, lambda i: t0 + i * args.spread / args.n)
        app = Core.from_settings(Settings(redis_url=url)).app
        scheduler = ForwarderScheduler(app)
        scheduler.dispatcher.prebuilt = not args.send_task
        passes = 0
        with QueueProbe(url) as probe:
            _ignored.add(probe._thread.ident or 0)
            while time.time() < t0:
                scheduler.tick()
            _writes.clear()
            profiler = cProfile.Profile()
            cpu0, began = time.thread_time(), time.time()
            landed0 = len(probe.landed)
            if not args.no_profile:
                profiler.enable()
            while time.time() < began + args.seconds:
                scheduler.tick()
                passes += 1
            profiler.disable()
            cpu = time.thread_time() - cpu0
            end = time.time()
            time.sleep(0.5)
            landed = probe.landed[landed0:]
        scheduler.close()
    fired = len(landed)
    lateness = [
        m.at - float(m.headers.get("forwarder_slot", "nan"))
        for m in landed
        if float(m.headers.get("forwarder_slot", "nan")) < end
    ]
    trips = sum(_writes.values())
    print(
        f"N={args.n} over {args.spread}s, {args.seconds}s profiled: {fired} fired, {passes} passes"
    )
    print(f"beat thread CPU {cpu:.2f}s: {cpu / max(1, fired) * 1000:.2f} ms/firing")
    print(f"round trips {trips}: {trips / max(1, passes):.2f}/pass, by command: {_writes}")
    s = summarize(lateness)
    print(
        f"lateness (under cProfile) p50 {s['p50'] * 1000:.1f} ms  p99 {s['p99'] * 1000:.1f} ms"
        f"  max {s['max'] * 1000:.1f} ms"
    )
    if args.no_profile:
        return
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.top)
    print(out.getvalue())
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
