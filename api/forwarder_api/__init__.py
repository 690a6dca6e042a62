"""Forwarder's HTTP API (FastAPI, port 7500): runs, schedules, monitoring and metrics."""
