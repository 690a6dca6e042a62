"""Prometheus metrics: the API's own requests and submissions, plus schedule, scheduler,
run, queue and worker figures read from Redis at scrape time.

Each app gets its own registry (tests build many apps in one process). Request metrics are
labelled with the route template, not the raw path, so ids do not explode cardinality.

A scrape reads everything in a handful of round trips whatever the number of schedules
(entries, their run stats, then the global figures): nothing is read per schedule. What can
be kept between scrapes is: the parsed definitions (by rev, :class:`EntryCache`) and a cron
schedule's period (by its timing). The per-schedule series, a dozen per schedule, are written
straight as text (:class:`ScheduleSeries`); the few global ones go through prometheus_client.
docs/metrics.md lists them all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from forwarder_worker import Core
from forwarder_worker.dispatch.metrics import LATENESS_BUCKETS
from forwarder_worker.names import DURATION_BUCKETS, SUSPENDED_AFTER_FAILURES
from forwarder_worker.runs.records import ScheduleStats
from forwarder_worker.schedules.store import Entry, EntryCache, StoredEntry
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("forwarder.api")


def cumulative(
    figures: dict[str, float], bounds: Sequence[float]
) -> tuple[list[tuple[str, float]], float]:
    """A histogram's Prometheus buckets (cumulative, ``+Inf`` last) and its sum, from the
    per-bucket counts ``le_<bound>``, ``le_inf`` and ``sum`` that Redis keeps."""
    buckets, running = [], 0.0
    for bound in bounds:
        running += figures.get(f"le_{bound}", 0.0)
        buckets.append((str(bound), running))
    running += figures.get("le_inf", 0.0)
    buckets.append(("+Inf", running))
    return buckets, figures.get("sum", 0.0)


class Periods:
    """Each schedule's expected seconds between runs, computed once per timing.

    An interval's is its interval and a one-off has none; a cron schedule's (exclusions
    and window applied) is the gap between its next two fire times when first asked, cached
    by everything that decides its timing, so a scrape does not walk 10,000 crons."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._cron: dict[tuple[Any, ...], float | None] = {}

    def period(self, entry: Entry) -> float | None:
        """The expected seconds between ``entry``'s runs (None: a one-off, or no more runs)."""
        if "every" in entry.schedule:
            return float(entry.schedule["every"])
        if "cron" not in entry.schedule:
            return None
        key = (
            entry.schedule["cron"],
            entry.tz,
            entry.start,
            entry.end,
            tuple(entry.exclude_cron),
            tuple(entry.exclude_dates),
        )
        if key not in self._cron:
            if len(self._cron) >= self.limit:
                self._cron.clear()  # timings that come and go; the live ones refill it
            timetable = entry.timetable(0.0)
            first = timetable.next_after(time.time())
            second = None if first is None else timetable.next_after(first)
            self._cron[key] = None if first is None or second is None else second - first
        return self._cron[key]


@dataclass(frozen=True)
class StoreFigures:
    """What one scrape read from Redis."""

    entries: list[StoredEntry]
    stats: list[ScheduleStats]  # per entry, in order
    scheduler: dict[str, float]
    lock_held: bool
    durations: dict[str, dict[str, float]]
    queues: dict[str, int]
    workers: int

    @classmethod
    def read(cls, core: Core, cache: EntryCache) -> StoreFigures:
        """Everything, in a few pipelined round trips (none per schedule); definitions
        already in ``cache`` are not read again."""
        entries = core.store.entries(cache)
        return cls(
            entries=entries,
            stats=core.runs.stats([stored.entry.name for stored in entries]),
            scheduler=core.metrics.read(),
            lock_held=core.metrics.beat_lock_held(),
            durations=core.runs.durations(),
            queues=core.queue_lengths.read(stored.entry.queue for stored in entries),
            workers=core.workers.alive(),
        )


class StoreFamilies(Collector):
    """The scrape's global figures as metric families (a handful of series)."""

    def __init__(self, figures: StoreFigures | None) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("forwarder_api_redis_up", "Whether Redis answered this scrape")
        up.add_metric([], 0 if self.figures is None else 1)
        yield up
        if self.figures is None:
            return
        figures = self.figures
        yield self._states(figures.entries)
        yield from self._scheduler(figures.scheduler)
        duration = HistogramMetricFamily(
            "forwarder_task_duration_seconds",
            "How long runs ran (started to finished), by task",
            labels=["task"],
        )
        for task, by_bucket in sorted(figures.durations.items()):
            buckets, total = cumulative(by_bucket, DURATION_BUCKETS)
            duration.add_metric([task], buckets, sum_value=total)
        yield duration
        length = GaugeMetricFamily(
            "forwarder_queue_length", "Messages waiting in each Celery queue", labels=["queue"]
        )
        for queue, count in sorted(figures.queues.items()):
            length.add_metric([queue], count)
        yield length
        yield GaugeMetricFamily(
            "forwarder_workers",
            "Workers alive (heard from within 3 heartbeats)",
            value=figures.workers,
        )
        yield GaugeMetricFamily(
            "forwarder_beat_lock_held",
            "Whether a beat holds the scheduler's lock (1) or none does (0)",
            value=int(figures.lock_held),
        )

    @staticmethod
    def _states(entries: Sequence[StoredEntry]) -> Metric:
        states = {"Scheduled": 0, "Suspended": 0, "Completed": 0, SUSPENDED_AFTER_FAILURES: 0}
        for stored in entries:
            if stored.entry.suspend:
                states["Suspended"] += 1
            elif stored.paused is not None:
                states[SUSPENDED_AFTER_FAILURES] += 1
            elif stored.meta.done or stored.due is None:
                states["Completed"] += 1
            else:
                states["Scheduled"] += 1
        schedules = GaugeMetricFamily(
            "forwarder_schedules", "Schedule entries by state", labels=["state"]
        )
        for state, count in states.items():
            schedules.add_metric([state], count)
        return schedules

    @staticmethod
    def _scheduler(figures: dict[str, float]) -> Iterator[Metric]:
        for name, help_text in (
            ("fired", "Firings sent by the scheduler"),
            ("skipped", "Firings skipped (concurrencyPolicy Forbid, missed deadline)"),
            ("missed", "Slots missed while the scheduler could not fire"),
            ("excluded", "Slots not fired because a schedule's exclusions matched them"),
            (
                "suspended_after_failures",
                "Schedules suspended by suspendAfterFailures (each pause counted once)",
            ),
        ):
            counter = CounterMetricFamily(f"forwarder_scheduler_{name}", help_text)
            counter.add_metric([], figures.get(name, 0.0))
            yield counter
        buckets, _ = cumulative(figures, LATENESS_BUCKETS)
        lateness = HistogramMetricFamily(
            "forwarder_scheduler_lateness_seconds",
            "How late firings were sent after their slot",
        )
        lateness.add_metric([], buckets, sum_value=figures.get("lateness_sum", 0.0))
        yield lateness


# The per-schedule families: (name, type, help), in the order they are written.
SCHEDULE_FAMILIES = (
    (
        "forwarder_schedule_last_success_timestamp_seconds",
        "gauge",
        "When the schedule's last successful run ended (epoch seconds)",
    ),
    (
        "forwarder_schedule_last_run_timestamp_seconds",
        "gauge",
        "The slot of the schedule's last firing (epoch seconds)",
    ),
    ("forwarder_schedule_consecutive_failures", "gauge", "The schedule's failed runs in a row"),
    (
        "forwarder_schedule_runs_total",
        "counter",
        "The schedule's ended runs by outcome (succeeded, failed, skipped)",
    ),
    (
        "forwarder_schedule_missed_slots_total",
        "counter",
        "The schedule's slots missed while the scheduler could not fire, or past their "
        "starting deadline",
    ),
    (
        "forwarder_schedule_excluded_slots_total",
        "counter",
        "The schedule's slots not fired because its exclusions matched them",
    ),
    (
        "forwarder_schedule_next_run_timestamp_seconds",
        "gauge",
        "When the schedule fires next (epoch seconds; absent when suspended or completed)",
    ),
    (
        "forwarder_schedule_period_seconds",
        "gauge",
        "The expected seconds between the schedule's runs (absent for a one-off)",
    ),
    (
        "forwarder_schedule_suspended",
        "gauge",
        "Whether the schedule is suspended (spec.suspend, or after failed runs)",
    ),
    (
        "forwarder_schedule_last_lateness_seconds",
        "gauge",
        "How late the schedule's last firing from the scheduler was sent after its slot",
    ),
)


def _label_value(value: str) -> str:
    """A label value escaped for the text format."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class ScheduleSeries:
    """The per-schedule series, written straight as Prometheus text.

    10,000 schedules make 120,000 samples: prometheus_client's exposition sorts and escapes
    every sample's labels again (most of a scrape's time), while here a schedule's label set
    is escaped once and shared by its dozen samples."""

    def __init__(self) -> None:
        self.periods = Periods()

    def render(self, entries: Sequence[StoredEntry], stats: Sequence[ScheduleStats]) -> str:
        """The families of :data:`SCHEDULE_FAMILIES` for ``entries`` (stats in order)."""
        lines: list[list[str]] = [[] for _ in SCHEDULE_FAMILIES]
        (
            last_success,
            last_run,
            failures,
            runs,
            missed,
            excluded,
            next_run,
            period,
            suspended,
            lateness,
        ) = lines
        for stored, figures in zip(entries, stats, strict=True):
            entry = stored.entry
            namespace, _, name = entry.name.partition("/")
            # Labels in name order, as prometheus_client writes them.
            schedule = f'schedule="{_label_value(name)}",task="{_label_value(entry.task)}"'
            labels = f'{{namespace="{_label_value(namespace)}",{schedule}}} '
            if figures.last_success is not None:
                last_success.append(f"{labels}{figures.last_success!r}")
            if figures.last_schedule is not None:
                last_run.append(f"{labels}{figures.last_schedule!r}")
            failures.append(f"{labels}{figures.consecutive_failures}")
            outcome = f'{{namespace="{_label_value(namespace)}",outcome='
            runs.append(f'{outcome}"succeeded",{schedule}}} {figures.succeeded}')
            runs.append(f'{outcome}"failed",{schedule}}} {figures.failed}')
            runs.append(f'{outcome}"skipped",{schedule}}} {figures.skipped}')
            missed.append(f"{labels}{stored.meta.missed}")
            excluded.append(f"{labels}{stored.meta.excluded}")
            if stored.due is not None:
                next_run.append(f"{labels}{stored.due!r}")
            every = self.periods.period(entry)
            if every is not None:
                period.append(f"{labels}{every!r}")
            suspended.append(f"{labels}{int(entry.suspend or stored.paused is not None)}")
            if figures.last_lateness is not None:
                lateness.append(f"{labels}{figures.last_lateness!r}")
        out: list[str] = []
        for (family, kind, help_text), samples in zip(SCHEDULE_FAMILIES, lines, strict=True):
            out.append(f"# HELP {family} {help_text}\n# TYPE {family} {kind}\n")
            out.extend(f"{family}{sample}\n" for sample in samples)
        return "".join(out)


class ApiMetrics:
    """The API's registry and its instruments, and the figures read from Redis per scrape."""

    def __init__(self, core: Core, waiting: Callable[[], float]) -> None:
        self.core = core
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "forwarder_api_requests",
            "HTTP requests handled",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "forwarder_api_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )
        self.submitted = Counter(
            "forwarder_api_runs_submitted",
            "Runs submitted through POST /tasks/{name}/runs",
            ["task"],
            registry=self.registry,
        )
        Gauge(
            "forwarder_api_long_polls_waiting",
            "Long polls (GET /runs/{id}?wait=) waiting for their run to end",
            registry=self.registry,
        ).set_function(waiting)
        self.schedules = ScheduleSeries()
        self.entries = EntryCache()

    def exposition(self) -> bytes:
        """The whole scrape in Prometheus' text format: the api's instruments, then what
        Redis holds (``forwarder_api_redis_up`` 0 and nothing more when it does not answer)."""
        figures: StoreFigures | None
        try:
            figures = StoreFigures.read(self.core, self.entries)
        except redis.RedisError as exc:
            log.warning("metrics: Redis unavailable: %s", exc)
            figures = None
        text = generate_latest(self.registry) + generate_latest(StoreFamilies(figures))
        if figures is None:
            return text
        return text + self.schedules.render(figures.entries, figures.stats).encode()


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # Kinds are bounded: methods x route templates x statuses (unmatched paths share one).
        self._cache: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            count, latency = self._children(scope.get("method", ""), template, status)
            count.inc()
            latency.observe(time.perf_counter() - start)

    def _children(self, method: str, template: str, status: int) -> tuple[Any, Any]:
        """The labelled counter and histogram of a request kind, looked up once per kind
        (``labels()`` takes a lock and builds the label tuple on every call)."""
        key = (method, template, status)
        children = self._cache.get(key)
        if children is None:
            children = (
                self.metrics.requests.labels(method, template, str(status)),
                self.metrics.latency.labels(method, template),
            )
            self._cache[key] = children
        return children
