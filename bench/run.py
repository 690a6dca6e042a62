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
from harness import steal_seconds

# Arming comes after the operator benchmark: by then, in quick mode too, redbeat's arming
# trials (started first, in the background, over one 300 s loop of redbeat's) are done. Run
# right after precision, it waited about 40 s for them, all of quick mode's margin on a slow
# machine.
BENCHMARKS = (
    "memory",
    "burst",
    "precision",
    "roundtrip",
    "operator_scale",
    "arming",
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
    stolen_before = steal_seconds()
    for name in chosen:
        started, stolen = time.monotonic(), steal_seconds()
        # The machine is shared: the load each benchmark started under, and the CPU time the
        # hypervisor gave to other guests while it ran, go with its figures.
        print(f"\n## {name} (load average {os.getloadavg()[0]:.2f})", flush=True)
        module = importlib.import_module(name)
        kwargs = dict(extra, slow=slow) if name == "arming" else dict(extra)
        module.run(args.full, **kwargs)
        took = time.monotonic() - started
        print(f"   ({name}: {took:.0f}s{_stolen(stolen, took)})", flush=True)
    plots.draw_all()
    took = time.monotonic() - began
    print(f"\nall done in {took:.0f}s{_stolen(stolen_before, took)}", flush=True)


def _stolen(before: float | None, seconds: float) -> str:
    """The steal time since ``before`` and its share of the CPUs' time, as a suffix of the
    line that gives a benchmark's time (empty where the kernel does not report it)."""
    now = steal_seconds()
    if before is None or now is None:
        return ""
    stolen = now - before
    share = stolen / (seconds * (os.cpu_count() or 1))
    return f", CPU stolen by the hypervisor {stolen:.1f}s ({share:.1%} of the CPUs' time)"


if __name__ == "__main__":
    main()
