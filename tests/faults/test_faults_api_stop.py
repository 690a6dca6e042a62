"""Stopping the API while long polls wait: they are answered at once and the process ends.

A pod gets SIGTERM, then SIGKILL when its grace period (30 s by default) runs out. uvicorn
stops accepting connections and waits for the requests in flight, and a long poll
(``?wait=`` up to 55 s) would hold it until the kill cut the client's request. The real API
process (``forwarder api``) runs with no worker, so the submitted run stays PENDING, and it
gets SIGTERM while two long polls wait for that run.
"""

from __future__ import annotations

import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support.api_process import api_env, client, start_api
from support.processes import eventually, forwarder_env, free_port, running

WAIT = 50


def _waiting(api: httpx.Client) -> float:
    metrics = api.get("/metrics").text
    found = re.search(r"^forwarder_api_long_polls_waiting (\S+)$", metrics, re.MULTILINE)
    assert found, metrics
    return float(found[1])


@pytest.mark.slow
def test_sigterm_answers_the_waiting_long_polls_and_the_api_stops(
    redis_url: str, logs: Path
) -> None:
    api_port = free_port()
    env = api_env(forwarder_env(redis_url), flower_port=free_port(), logs=logs)
    api_proc = start_api(env, logs / "api.log", api_port)
    with running(api_proc), client(api_port) as api:
        reply = api.post("/tasks/forwarder.ping/runs", json={})
        assert reply.status_code == 202, reply.text
        run_id = reply.json()["id"]

        def long_poll() -> httpx.Response:
            with client(api_port) as own:
                own.timeout = httpx.Timeout(WAIT + 30)
                return own.get(f"/runs/{run_id}", params={"wait": WAIT})

        with ThreadPoolExecutor(2) as pool:
            polls = [pool.submit(long_poll) for _ in range(2)]
            eventually(lambda: _waiting(api) == 2, 30, 0.1, message="two long polls waiting")
            stopped_at = time.monotonic()
            api_proc.signal(signal.SIGTERM)
            answers = [poll.result(timeout=WAIT + 30) for poll in polls]
            answered_in = time.monotonic() - stopped_at
        # Answered with the run as it is, well before the wait (or a pod's grace) ran out.
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert [a.json()["state"] for a in answers] == ["PENDING", "PENDING"]
        assert answered_in < 15, answered_in
        # uvicorn ends by re-raising the SIGTERM it handled, once it has shut down cleanly.
        assert api_proc.popen.wait(15) in (0, -signal.SIGTERM)
