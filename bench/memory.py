"""Benchmark 6, Redis memory per schedule entry: Forwarder's store against redbeat's.

The same N entries (a realistic ``forwarder.http`` entry every 30 s) are written into an empty
Valkey by each store's own writer. Reported: the mean ``MEMORY USAGE`` of an entry's hash,
the due set's (and Forwarder's index set's) ``MEMORY USAGE`` divided by N, and the growth of
``used_memory`` divided by N, which also counts the key-space overhead. Then each entry fires
once (its meta grows), and the hash is measured again. Run records are not schedule entries
and are counted separately (one run's hash).
"""

from __future__ import annotations

import time
from typing import Any

import redis
from entries import anchor_app, entry_name, load_ours, load_redbeat
from forwarder_worker import Core, Settings
from harness import ANCHOR_PREFIX, PREFIX, redis_for, show, table, write_result

EVERY = 30


def _measure(client: redis.Redis, keys: list[str], index_keys: list[str], n: int) -> dict[str, Any]:
    hashes = [int(client.memory_usage(k, samples=0) or 0) for k in keys]
    index = sum(int(client.memory_usage(k, samples=0) or 0) for k in index_keys)
    return {
        "hash_bytes_mean": sum(hashes) / len(hashes),
        "index_bytes_per_entry": index / n,
        "total_bytes_per_entry": sum(hashes) / len(hashes) + index / n,
    }


def one(kind: str, n: int) -> dict[str, Any]:
    with redis_for(f"memory-{kind}") as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        client.config_set("appendonly", "no")
        now = float(int(time.time()))
        half = n // 2
        # The growth over the second half is the marginal cost of an entry, free of one-off
        # costs (connections, the Lua script cache, the first keys of each kind).
        if kind == "forwarder":
            load_ours(url, range(half), EVERY, lambda i: now + 3600, realistic=True)
            before = int(client.info("memory")["used_memory"])
            load_ours(url, range(half, n), EVERY, lambda i: now + 3600, realistic=True)
            keys = [f"{PREFIX}{entry_name(i)}" for i in range(n)]
            index_keys = [f"{PREFIX}:schedule", f"{PREFIX}:entries"]
        else:
            app = anchor_app(url)
            load_redbeat(app, range(half), EVERY, lambda i: now + 3600, realistic=True)
            before = int(client.info("memory")["used_memory"])
            load_redbeat(app, range(half, n), EVERY, lambda i: now + 3600, realistic=True)
            keys = [f"{ANCHOR_PREFIX}{entry_name(i)}" for i in range(n)]
            index_keys = [f"{ANCHOR_PREFIX}:schedule"]
        after = int(client.info("memory")["used_memory"])
        written = _measure(client, keys, index_keys, n)
        sample = client.hgetall(keys[0])
        # As after a firing: meta holds the last run (and redbeat's total_run_count).
        fired_meta = (
            '{"anchor":1795600000.123456,"last":1795600030.123456,"count":1,"done":false}'
            if kind == "forwarder"
            else '{"last_run_at": {"__type__": "datetime", "year": 2026, "month": 11, "day": 25,'
            ' "hour": 23, "minute": 0, "second": 0, "microsecond": 123456, "timezone": 0.0},'
            ' "total_run_count": 1}'
        )
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hset(key, "meta", fired_meta)
            pipe.execute()
        fired = _measure(client, keys, index_keys, n)
        run_bytes = None
        if kind == "forwarder":
            runs = Core.from_settings(Settings(redis_url=url, key_prefix=PREFIX)).runs
            runs.queued(
                "0f8e7a2c-5b1d-4c39-9a57-3f1e2d4c5b6a",
                "forwarder.http",
                source="schedule",
                schedule=entry_name(0),
                slot=now,
                kwargs={"url": "http://exporter.mlops:9100/metrics", "method": "GET"},
            )
            run_bytes = int(
                client.memory_usage(f"{PREFIX}run:0f8e7a2c-5b1d-4c39-9a57-3f1e2d4c5b6a", samples=0)
            )
        client.close()
    return {
        "n": n,
        "scheduler": kind,
        "used_memory_growth_per_entry": (after - before) / (n - half),
        "as_written": written,
        "after_one_firing": fired,
        "sample_entry_fields": {k: len(v) for k, v in sample.items()},
        "sample_entry": sample,
        "one_run_record_bytes": run_bytes,
    }


def run(full: bool, sizes: list[int] | None = None) -> dict[str, Any]:
    n = (sizes or [10000 if full else 1000])[0]
    ours, anchor = one("forwarder", n), one("redbeat", n)
    rows = [
        (
            "hash MEMORY USAGE (written)",
            anchor["as_written"]["hash_bytes_mean"],
            ours["as_written"]["hash_bytes_mean"],
            "B",
        ),
        (
            "+ due/index sets per entry",
            anchor["as_written"]["total_bytes_per_entry"],
            ours["as_written"]["total_bytes_per_entry"],
            "B",
        ),
        (
            "hash + sets after a firing",
            anchor["after_one_firing"]["total_bytes_per_entry"],
            ours["after_one_firing"]["total_bytes_per_entry"],
            "B",
        ),
        (
            "used_memory growth per entry",
            anchor["used_memory_growth_per_entry"],
            ours["used_memory_growth_per_entry"],
            "B",
        ),
    ]
    show(f"Redis memory per schedule entry (N={n}, lower is better)", rows)
    data = {
        "mode": "full" if full else "quick",
        "target": "comparable to redbeat's (about 0.8 KB per entry)",
        "results": [anchor, ours],
        "rows": table(rows),
    }
    write_result("memory", data)
    return data
