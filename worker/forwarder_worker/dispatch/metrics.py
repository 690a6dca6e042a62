"""The scheduler's fire, skip, miss, exclusion and lateness counters, kept in one Redis hash
so any process can read them (the api's ``/metrics``, the benchmarks).

Beat adds its figures with its next read of the due set (no round trip of their own, see
:mod:`forwarder_worker.beat.scheduler`); run-now triggers add theirs in a pipeline
(:meth:`forwarder_worker.dispatch.dispatcher.Dispatcher.fire`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from forwarder_worker._redis.keys import Keys

# Lateness buckets (seconds) of the dispatch-lateness histogram, Prometheus-style.
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SchedulerMetrics:
    """Fire, skip and lateness counters, kept in one Redis hash so any process can read them."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.key = keys.metrics
        self.lock = keys.lock

    @staticmethod
    def increments(
        *, fired: Sequence[float], skipped: int, missed: int, excluded: int = 0
    ) -> list[tuple[str, int | float]]:
        """A batch's figures as (counter, increment) pairs; ``fired`` holds each sent
        firing's lateness in seconds."""
        out: list[tuple[str, int | float]] = []
        if fired:
            out += [
                ("fired", len(fired)),
                ("lateness_sum", sum(fired)),
                ("lateness_count", len(fired)),
            ]
            counts: dict[str, int] = {}
            for lateness in fired:
                bucket = next((b for b in LATENESS_BUCKETS if lateness <= b), None)
                name = f"le_{bucket}" if bucket is not None else "le_inf"
                counts[name] = counts.get(name, 0) + 1
            out += counts.items()
        if skipped:
            out.append(("skipped", skipped))
        if missed:
            out.append(("missed", missed))
        if excluded:
            out.append(("excluded", excluded))
        return out

    def add(self, pipe: Any, increments: Sequence[tuple[str, int | float]]) -> None:
        """Add (counter, increment) pairs through ``pipe`` (or a client)."""
        for name, value in increments:
            if isinstance(value, float):
                pipe.hincrbyfloat(self.key, name, value)
            else:
                pipe.hincrby(self.key, name, value)

    def read(self) -> dict[str, float]:
        """Every counter; lateness buckets as ``le_<seconds>`` (not cumulative)."""
        return {k: float(v) for k, v in self.client.hgetall(self.key).items()}

    def beat_lock_held(self) -> bool:
        """Whether a beat holds the scheduler's lock (it expires unless its holder renews it,
        so a beat that died lets it go within ``beat_lock_timeout``)."""
        return bool(self.client.exists(self.lock))
