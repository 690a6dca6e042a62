"""One client of benchmark 4 (the interactive round trip), run as its own process.

A bench with 32 concurrent clients stands for 32 programs, each with its own interpreter.
Until the report of 2026-11-26 they were 32 threads of the bench's one process. They then
shared one GIL, and at 32 clients that process bounded the figures: httpx's CPU per run
doubled from 1 to 32 threads (3.3 to 6.7 ms), and Celery's stayed flat. So the bench measured
CPython's thread switching, and it measured it differently for the two paths. Each client is
now a process of its own, for the anchor and for the API alike.

Protocol (JSON lines, no pickle): the environment gives ``RT_REDIS_URL``, ``RT_BASE_URL`` and
``RT_TOKEN``. The client warms both paths, then prints ``{"ready": true}``. Each command on
stdin is ``{"path": ..., "start_at": <time.time()>, "seconds": ...}``. The client waits until
``start_at`` and runs round trips back to back for ``seconds``. It then prints one line: every
latency, the failures, how many finished in time, the POST and GET times, the GETs per run,
and its own CPU seconds. An empty line or EOF ends it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
from forwarder_worker import Core
from forwarder_worker.settings import Settings

POLL = 0.005
LONG_POLL = 30
ENDED = ("SUCCESS", "FAILURE", "REVOKED")


class Client:
    """The three ways of running ``forwarder.ping`` and waiting for its result."""

    def __init__(self, redis_url: str, base_url: str, token: str) -> None:
        self.celery = Core.from_settings(Settings(redis_url=redis_url)).app
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        # Where an API round trip goes: the POST, and each GET of the run.
        self.parts: dict[str, list[float]] = {"post": [], "get": [], "gets_per_run": []}
        self.paths: dict[str, Callable[[], None]] = {
            "raw celery": self.via_celery,
            "api": self.via_api,
            "api long-poll": self.via_api_long_poll,
        }

    def via_celery(self) -> None:
        self.celery.send_task("forwarder.ping").get(timeout=30)

    def via_api(self) -> None:
        self._poll(self._submit(), {}, POLL, 30)

    def via_api_long_poll(self) -> None:
        self._poll(self._submit(), {"wait": LONG_POLL}, 0.0, 60)

    def _submit(self) -> str:
        """POST a ping through the API; the run's id."""
        began = time.perf_counter()
        reply = self.http.post("/tasks/forwarder.ping/runs", json={})
        self.parts["post"].append(time.perf_counter() - began)
        reply.raise_for_status()
        return str(reply.json()["id"])

    def _poll(self, run_id: str, params: dict[str, Any], sleep: float, limit: float) -> None:
        """GET the run until it ends, recording each GET's time and the GETs per run."""
        deadline = time.monotonic() + limit
        gets = 0
        while time.monotonic() < deadline:
            began = time.perf_counter()
            state = self.http.get(f"/runs/{run_id}", params=params).json()["state"]
            self.parts["get"].append(time.perf_counter() - began)
            gets += 1
            if state in ENDED:
                self.parts["gets_per_run"].append(gets)
                if state != "SUCCESS":
                    raise RuntimeError(f"run {run_id} ended {state}")
                return
            time.sleep(sleep)
        raise TimeoutError(run_id)

    def drive(self, path: str, start_at: float, seconds: float) -> dict[str, Any]:
        """Round trips of ``path`` back to back from ``start_at`` for ``seconds``.

        Throughput counts the round trips finished within ``seconds``, so one still in
        flight at the end (the slowest path's longest) does not stretch its time."""
        one = self.paths[path]
        for values in self.parts.values():
            values.clear()
        latencies: list[float] = []
        failures = in_time = 0
        time.sleep(max(0.0, start_at - time.time()))
        cpu = time.process_time()
        stop_at = start_at + seconds
        while time.time() < stop_at:
            began = time.perf_counter()
            try:
                one()
            except Exception:  # a failed round trip is counted, not fatal
                failures += 1
                continue
            latencies.append(time.perf_counter() - began)
            in_time += time.time() <= stop_at
        return {
            "latencies": latencies,
            "failures": failures,
            "in_time": in_time,
            "cpu_s": time.process_time() - cpu,
            **self.parts,
        }


def main() -> None:
    client = Client(os.environ["RT_REDIS_URL"], os.environ["RT_BASE_URL"], os.environ["RT_TOKEN"])
    for _ in range(5):  # connections, imports and first-call caches of every path
        for one in client.paths.values():
            one()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        command = json.loads(line)
        result = client.drive(command["path"], command["start_at"], command["seconds"])
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
