"""Flower's broker view counts the real queue: Forwarder's key prefix and priority sub-queues.

Every broker key Forwarder writes sits under kombu's ``global_keyprefix`` (``forwarder:`` by
default), and a message sent with a priority lands in a sub-queue (``default\\x06\\x169``).
Flower before 2.0 ran ``LLEN default`` and showed 0 for a full queue (mher/flower#1254);
2.0 and later read the prefix from ``broker_transport_options``, which is why the pin starts
there. These tests fill a queue no worker consumes and read both the broker page and Flower's
``/api/queues/length``, so a Flower that loses the prefix again fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import redis
from forwarder_worker import Core, Settings
from support.api_process import FLOWER_PASSWORD, FLOWER_USER, api_env, start_flower
from support.processes import forwarder_env, free_port, running

PLAIN, URGENT = 7, 3


def _fill(core: Core) -> None:
    for _ in range(PLAIN):
        core.app.send_task("forwarder.ping", queue="default")
    for _ in range(URGENT):
        core.app.send_task("forwarder.ping", queue="default", priority=9)


@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["forwarder:", "team-a:fw:"])
def test_broker_page_and_api_count_prefixed_and_priority_messages(
    redis_url: str, rclient: redis.Redis, logs: Path, prefix: str
) -> None:
    core = Core.from_settings(Settings(redis_url=redis_url, key_prefix=prefix))
    try:
        _fill(core)
        keys = set(rclient.keys("*"))
        assert f"{prefix}default" in keys and f"{prefix}default\x06\x169" in keys, keys
    finally:
        core.close()

    port = free_port()
    env = api_env(
        forwarder_env(redis_url, FORWARDER_KEY_PREFIX=prefix), flower_port=port, logs=logs
    )
    flower = start_flower(env, logs / "flower.log", port)
    auth = (FLOWER_USER, FLOWER_PASSWORD)
    with running(flower), httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=auth) as http:
        page = http.get("/broker")
        assert page.status_code == 200, page.text
        row = re.search(r'<tr id="default">(.*?)</tr>', page.text, re.S)
        assert row is not None, page.text
        cells = [
            re.sub(r"<[^>]+>", "", c).strip()
            for c in re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)
        ]
        assert cells[:2] == ["default", str(PLAIN + URGENT)], cells

        lengths = http.get("/api/queues/length")
        assert lengths.status_code == 200, lengths.text
        assert {"name": "default", "messages": PLAIN + URGENT} in lengths.json()["active_queues"]
