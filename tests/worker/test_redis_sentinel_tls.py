"""Every client a Core builds, in Sentinel mode over TLS: a master, a replica and three
sentinels (real ``redis-server``/``redis-sentinel``, certificates made by the test) that speak
only TLS, with passwords on the master and on the sentinels.

The store, the blocking and asyncio clients, the broker (kombu's sentinel transport, with
``broker_use_ssl``) and the result backend (Celery's Sentinel backend, with
``redis_backend_use_ssl``) all reach the master; a CA that does not verify the sentinels
stops ``check_credentials`` with one line. The failover itself is
``tests/faults/test_faults_sentinel_failover.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from forwarder_worker import Core, Settings
from forwarder_worker._redis.clients import RedisCredentialsRejected, check_credentials
from forwarder_worker.schedules.model import parse_spec
from forwarder_worker.schedules.store import Entry
from support.redis_ha import redis_binaries_missing, sentinel_set
from support.tls_certs import make_tls_files

pytestmark = pytest.mark.skipif(redis_binaries_missing() is not None, reason="make tools")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_every_client_of_a_core_reaches_the_master_through_tls_sentinels(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "certs")
    with sentinel_set(
        tmp_path / "ha", password="master-pw", sentinel_password="sentinel-pw", tls=tls
    ) as ha:
        settings = Settings(
            redis_sentinels=ha.addresses.split(","),
            redis_password="master-pw",
            redis_sentinel_password="sentinel-pw",
            redis_tls=True,
            redis_tls_ca_file=tls.ca,
        )
        check_credentials(settings)
        core = Core.from_settings(settings)
        try:
            spec = parse_spec({"task": "forwarder.ping", "schedule": {"every": "1h"}})
            core.store.upsert(Entry.from_spec("default/tls", spec, uid="uid-1", generation=1))
            with ha.master.client() as master:
                assert master.exists(core.keys.entry("default/tls"))
            assert core.waiter.ping()

            async def async_ping() -> bool:
                return bool(await core.async_client.ping())

            assert asyncio.run(async_ping())
            # The broker: a message on the master's queue, counted by the api's metric.
            core.app.send_task("forwarder.ping")
            assert core.queue_lengths.read()["default"] == 1
            # The result backend.
            core.app.backend.set("forwarder:probe", "1")
            assert core.app.backend.get("forwarder:probe") == b"1"
        finally:
            core.close()

        wrong = settings.model_copy(update={"redis_tls_ca_file": tls.other_ca})
        with pytest.raises(RedisCredentialsRejected) as refused:
            check_credentials(wrong)
        line = str(refused.value)
        assert "\n" not in line
        assert line.startswith("Redis sentinel 127.0.0.1:")
        assert "CERTIFICATE_VERIFY_FAILED" in line and "FORWARDER_REDIS_TLS_CA_FILE" in line
