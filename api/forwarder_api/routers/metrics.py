"""``/metrics``: Prometheus exposition of the app's registry (open unless configured)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from forwarder_api.deps import MetricsAuthorized, MetricsDep

router = APIRouter(tags=["metrics"], dependencies=[MetricsAuthorized])


@router.get("/metrics", response_class=Response)
def metrics(instruments: MetricsDep) -> Response:
    """Request counts and latency, runs submitted per task; schedules by state and per
    schedule; the scheduler's fire, skip and lateness figures; run durations by task, queue
    lengths, workers alive and the beat lock (docs/metrics.md)."""
    return Response(instruments.exposition(), media_type=CONTENT_TYPE_LATEST)
