"""What went through Redis, read back raw for tests: Celery's task messages from the queues'
lists and its events, decoded, and pub/sub subscriptions confirmed before anything is sent."""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from support.processes import eventually

SEP = "\x06\x16"  # kombu's separator between a queue's name and its priority step


def queued(client: redis.Redis, prefix: str) -> dict[str, dict[str, Any]]:
    """Every task message under ``prefix`` by task id, decoded (body included), with its
    queue and priority step under ``"redis"``; the queues are emptied."""
    out: dict[str, dict[str, Any]] = {}
    for key in client.keys(f"{prefix}*"):
        if client.type(key) != "list" or key.endswith(":wake"):
            continue
        queue, _, priority = key.removeprefix(prefix).partition(SEP)
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            body = base64.b64decode(message["body"])
            if message["headers"].get("compression"):
                body = zlib.decompress(body)
            message["body"] = json.loads(body)
            message["redis"] = {"queue": queue, "priority_step": priority}
            out[message["headers"]["id"]] = message
        client.delete(key)
    return out


@contextmanager
def subscribed(client: redis.Redis, pattern: str) -> Iterator[Any]:
    """A pub/sub connection whose subscription to ``pattern`` is confirmed (so nothing
    published from now on is missed); closed afterwards."""
    pubsub = client.pubsub()
    pubsub.psubscribe(pattern)
    try:
        eventually(lambda: pubsub.get_message(timeout=0.1), 10, 0, f"subscribed to {pattern}")
        yield pubsub
    finally:
        pubsub.close()


@contextmanager
def raw_events(client: redis.Redis, prefix: str) -> Iterator[list[tuple[str, Any]]]:
    """(routing key, decoded event envelope) of every Celery event published meanwhile."""
    got: list[tuple[str, Any]] = []
    with subscribed(client, f"{prefix}/0.celeryev/*") as pubsub:
        yield got
        while (message := pubsub.get_message(timeout=0.5)) is not None:
            envelope = json.loads(message["data"])
            body = json.loads(base64.b64decode(envelope["body"]))
            got.append((message["channel"].rsplit("/", 1)[1], {**envelope, "body": body}))
