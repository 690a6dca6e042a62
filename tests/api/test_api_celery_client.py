"""The API's Celery app sends without subscribing to results, and still reads them."""

from __future__ import annotations

import json
import time
import uuid

import redis
from forwarder_api.celery_client import (
    QueueDeclarations,
    ReusedClientChannel,
    SubmitOnlyRedisBackend,
    submit_conf,
)
from forwarder_worker import Core
from forwarder_worker.settings import Settings
from support.processes import eventually


def _result_channels(rclient: redis.Redis) -> list[str]:
    return [c for c in rclient.pubsub_channels() if "celery-task-meta-" in c]


def test_sending_leaves_no_result_subscription(redis_url: str, rclient: redis.Redis) -> None:
    settings = Settings(redis_url=redis_url)
    stock = Core.from_settings(settings).app
    ours = Core.from_settings(settings, conf=submit_conf(settings)).app
    try:
        assert isinstance(ours.backend, SubmitOnlyRedisBackend)
        # The stock app subscribes while its AsyncResult lives; that is what the API avoids.
        kept = stock.send_task("forwarder.ping", task_id=str(uuid.uuid4()))
        kept_id = kept.id
        eventually(lambda: kept_id in str(_result_channels(rclient)), 10, 0.05, "subscribed")
        del kept
        sent = [ours.send_task("forwarder.ping", task_id=str(uuid.uuid4())) for _ in range(3)]
        time.sleep(0.3)  # time for a SUBSCRIBE in flight to land, were one sent
        channels = _result_channels(rclient)
        assert not [c for c in channels if any(r.id in c for r in sent)]
        # Results are still stored by workers and read with a plain GET.
        ours.backend.store_result(sent[0].id, {"pong": True}, "SUCCESS")
        assert ours.AsyncResult(sent[0].id).result == {"pong": True}
        assert ours.AsyncResult(sent[0].id).state == "SUCCESS"
    finally:
        stock.close()
        ours.close()


def test_publishes_reuse_one_client_per_channel_and_all_land(
    redis_url: str, rclient: redis.Redis
) -> None:
    settings = Settings(redis_url=redis_url)
    app = Core.from_settings(settings, conf=submit_conf(settings)).app
    try:
        with app.producer_or_acquire() as producer:
            assert isinstance(producer.channel, ReusedClientChannel)
            ids = []
            clients = set()
            for _ in range(3):
                ids.append(app.send_task("forwarder.ping", producer=producer).id)
                assert producer.channel._reused is not None
                clients.add(id(producer.channel._reused[1]))
            assert len(clients) == 1
        # Each message is in the queue's list (the key prefix applies), none lost.
        queued = [
            json.loads(m)["headers"]["id"] for m in rclient.lrange("forwarder:default", 0, -1)
        ]
        assert sorted(queued) == sorted(ids)
    finally:
        app.close()


def test_each_queue_is_declared_once_per_process(redis_url: str, rclient: redis.Redis) -> None:
    settings = Settings(redis_url=redis_url)
    app = Core.from_settings(settings, conf=submit_conf(settings)).app
    queues = QueueDeclarations(app)
    try:
        with app.producer_or_acquire() as producer:
            for name in ("default", "reports", "default"):
                queues.ensure(producer, name)
                app.send_task("forwarder.ping", queue=name, declare=[], producer=producer)
        assert queues.declared == {"default", "reports"}
        # Declared on the broker (kombu's binding records), and the messages reached both.
        assert rclient.exists("forwarder:_kombu.binding.reports")
        assert rclient.llen("forwarder:default") == 2
        assert rclient.llen("forwarder:reports") == 1
    finally:
        app.close()
