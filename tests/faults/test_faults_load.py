"""Load: 50 concurrent API clients while 1,000 schedules fire.

The clients run for LOAD_SECONDS (60 s), as the issue asks: no request gets a 5xx, and every
run the API accepted (202) reaches a final state afterwards.
The 1,000 schedules (``every: 60s``) are written straight into the store, as the operator
would write them, just before the clients start, so all of them fall due during the load. They
go to their own queue and worker (as a deployment would keep batch work off the interactive
queue), so the test waits for the API's runs without draining 1,000 scheduled pings first.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis
from forwarder_worker import Core
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.store import Entry
from support.api_process import TOKEN, api_env, start_api
from support.processes import (
    celery_beat,
    celery_worker,
    eventually,
    forwarder_env,
    free_port,
    running,
)

CLIENTS = 50
LOAD_SECONDS = 60.0
BULK = "bulk"
SCHEDULES = 1000


def _client_loop(
    port: int, seed: int, stop: threading.Event, statuses: Counter[int], accepted: list[str]
) -> None:
    rng = random.Random(seed)
    mine: list[str] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as http:
        while not stop.is_set():
            roll = rng.random()
            try:
                if roll < 0.3:
                    reply = http.post("/tasks/forwarder.ping/runs", json={"kwargs": {"c": seed}})
                    if reply.status_code == 202:
                        mine.append(reply.json()["id"])
                elif roll < 0.55 and mine:
                    reply = http.get(f"/runs/{rng.choice(mine)}")
                elif roll < 0.75:
                    reply = http.get("/runs", params={"limit": 20})
                elif roll < 0.9:
                    reply = http.get("/schedules", params={"limit": 20})
                else:
                    reply = http.get("/tasks")
            except httpx.TimeoutException:
                statuses[-1] += 1  # counted as a failure below
                continue
            statuses[reply.status_code] += 1
    accepted.extend(mine)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_concurrent_clients_while_schedules_fire(
    redis_url: str, rclient: redis.Redis, core: Core, logs: Path
) -> None:
    api_port = free_port()
    env = api_env(forwarder_env(redis_url), flower_port=free_port(), logs=logs)
    worker = celery_worker(env, logs / "worker.log", concurrency=2)
    bulk = celery_worker(env, logs / "bulk.log", concurrency=2, queues=BULK, name="bulk")
    beat = celery_beat(env, logs / "beat.log")
    store, runs = core.store, core.runs
    with running(worker, bulk, beat):
        for proc in (worker, bulk):
            eventually(lambda proc=proc: " ready." in proc.output(), 90, message="workers")
        api = start_api(env, logs / "api.log", api_port)
        with running(api):
            spec = parse_spec(
                {"task": "forwarder.ping", "schedule": {"every": "60s"}, "queue": BULK}
            )
            for i in range(SCHEDULES):
                store.upsert(Entry.from_spec(f"load/s-{i:04d}", spec, uid=f"uid-{i}", generation=1))
            stop = threading.Event()
            statuses: Counter[int] = Counter()
            accepted: list[str] = []
            threads = [
                threading.Thread(
                    target=_client_loop, args=(api_port, seed, stop, statuses, accepted)
                )
                for seed in range(CLIENTS)
            ]
            for thread in threads:
                thread.start()
            time.sleep(LOAD_SECONDS)
            stop.set()
            for thread in threads:
                thread.join(90)
            assert not any(t.is_alive() for t in threads)
            fired = sum(1 for _ in rclient.scan_iter("forwarder:runs:s:load/*", count=1000))
            done = sum(
                1 for r in runs.recent(limit=SCHEDULES * 3) if r.schedule and r.state == "SUCCESS"
            )

            errors = {code: n for code, n in statuses.items() if code >= 500 or code < 0}
            assert not errors, f"server errors or timeouts under load: {dict(statuses)}"
            assert statuses[202] == len(accepted) > 0
            assert fired == SCHEDULES, f"only {fired} schedules fired during the load"
            assert done > 0, "no scheduled run completed during the load"
            # Every accepted run reaches a final state.

            def unfinished() -> list[str]:
                with rclient.pipeline(transaction=False) as pipe:
                    for run_id in accepted:
                        pipe.hget(f"forwarder:run:{run_id}", "state")
                    states = pipe.execute()
                return [i for i, s in zip(accepted, states, strict=True) if s != "SUCCESS"]

            eventually(lambda: not unfinished(), 180, 1.0, message="every accepted run final")
            print(
                f"{sum(statuses.values())} requests, {len(accepted)} runs accepted, "
                f"{fired} schedules fired, {done} scheduled runs done: {statuses}"
            )
