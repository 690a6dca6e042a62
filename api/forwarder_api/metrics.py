"""Prometheus metrics: the API's own requests and submissions, plus schedule and scheduler
figures read from Redis at scrape time.

Each app gets its own registry (tests build many apps in one process). Request metrics are
labelled with the route template, not the raw path, so ids do not explode cardinality.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from forwarder_worker.dispatch.metrics import LATENESS_BUCKETS, SchedulerMetrics
from forwarder_worker.names import SUSPENDED_AFTER_FAILURES
from forwarder_worker.schedules.store import ScheduleStore
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("forwarder.api")


class StoreCollector(Collector):
    """Schedules by state and the scheduler's counters, read from Redis on each scrape."""

    def __init__(self, store: ScheduleStore, scheduler: SchedulerMetrics) -> None:
        self.store = store
        self.scheduler = scheduler

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        up = GaugeMetricFamily("forwarder_api_redis_up", "Whether Redis answered this scrape")
        try:
            entries = self.store.entries()
            figures = self.scheduler.read()
        except redis.RedisError as exc:
            log.warning("metrics: Redis unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
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
        yield schedules
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
        # SchedulerMetrics keeps per-bucket counts; Prometheus wants them cumulative.
        buckets, running = [], 0.0
        for bound in LATENESS_BUCKETS:
            running += figures.get(f"le_{bound}", 0.0)
            buckets.append((str(bound), running))
        running += figures.get("le_inf", 0.0)
        buckets.append(("+Inf", running))
        lateness = HistogramMetricFamily(
            "forwarder_scheduler_lateness_seconds",
            "How late firings were sent after their slot",
        )
        lateness.add_metric([], buckets, sum_value=figures.get("lateness_sum", 0.0))
        yield lateness


class ApiMetrics:
    """The API's registry and its instruments."""

    def __init__(
        self, store: ScheduleStore, scheduler: SchedulerMetrics, waiting: Callable[[], float]
    ) -> None:
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
        self.registry.register(StoreCollector(store, scheduler))


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
