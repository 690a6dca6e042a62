"""Run the benchmarks: ``python bench/run.py [--full] [--only NAME ...] [--n N]``.

Quick mode (default) covers the scales up to 1,000; ``--full`` adds 10,000. Each benchmark
prints anchor and Forwarder side by side and writes ``bench/results/<name>.json``; the plots
are redrawn from the results at the end.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import arming
import plots

BENCHMARKS = (
    "memory",
    "burst",
    "precision",
    "arming",
    "roundtrip",
    "operator_scale",
    "metrics_scrape",
    "bounded_storage",
    "worker_throughput",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="include N=10,000")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--n", type=int, help="override N (harness development only)")
    args = parser.parse_args()
    chosen = args.only or list(BENCHMARKS)
    began = time.monotonic()
    extra: dict[str, object] = {"sizes": [args.n]} if args.n else {}
    # redbeat's default loop is 300 s, so its arming trials span 5 minutes: they run in the
    # background (an idle beat and a write every ~1.5 s) while the other benchmarks run.
    slow = None
    if "arming" in chosen:
        slow = arming.SlowArming(args.n or arming.TRIALS)
        slow.start()
    for name in chosen:
        started = time.monotonic()
        # The machine is shared: the load each benchmark started under goes with its figures.
        print(f"\n## {name} (load average {os.getloadavg()[0]:.2f})", flush=True)
        module = importlib.import_module(name)
        kwargs = dict(extra, slow=slow) if name == "arming" else dict(extra)
        module.run(args.full, **kwargs)
        print(f"   ({name}: {time.monotonic() - started:.0f}s)", flush=True)
    plots.draw_all()
    print(f"\nall done in {time.monotonic() - began:.0f}s", flush=True)


if __name__ == "__main__":
    main()
