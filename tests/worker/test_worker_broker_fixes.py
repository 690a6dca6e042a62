"""A channel closed after its connection released the transport (what Celery 5.7's consumer
does on a lost broker) raises only connection errors, so the worker survives (see
forwarder_worker.broker_fixes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from forwarder_worker import Core
from forwarder_worker.settings import Settings
from kombu import Producer, Queue
from support.valkey_process import valkey


def test_closing_a_channel_with_unacked_deliveries_after_release_is_a_connection_error(
    tmp_path: Path,
) -> None:
    with valkey(tmp_path / "redis") as server:
        app = Core.from_settings(Settings(redis_url=server.url)).app  # installs the fix
        with app.connection_for_write() as conn:
            channel = conn.channel()
            Producer(channel).publish({"n": 1}, routing_key="fix", declare=[Queue("fix")])
            assert channel.basic_get("fix", no_ack=False) is not None
            assert channel.qos._delivered  # a running task's unacked delivery
            channel._disconnect_pools()
            server.kill()
            # The state Celery 5.7 leaves: collect() released the transport, then close()
            # closes a channel that still holds the delivery.
            conn.transport.client = None
            with pytest.raises(conn.connection_errors):
                channel.close()
        app.close()
