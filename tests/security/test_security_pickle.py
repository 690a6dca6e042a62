"""A pickle-serialized message injected into the broker is refused and never executed.

The payload would create a file if anything unpickled it (the test proves that first, on a
different path). It goes into the worker's queue with content type
``application/x-python-serialize`` and a valid protocol-2 task header, so only the worker's
JSON-only ``accept_content`` stands between it and execution. Afterwards the file must not
exist, the worker must be the same live process, and it must still run a normal task.
"""

from __future__ import annotations

import pickle
import time
import uuid
from pathlib import Path

import redis
from forwarder_worker.app import create_app
from forwarder_worker.runs import RunLog
from forwarder_worker.settings import Settings
from kombu import Connection
from support.processes import celery_worker, eventually, forwarder_env, running


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``, which creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _payload(path: Path) -> bytes:
    # Protocol 2 body: (args, kwargs, embed); the "args" is the booby trap.
    return pickle.dumps(((_CreatesFile(path),), {}, {}), protocol=2)


def test_the_payload_is_live(tmp_path: Path) -> None:
    """The payload does create its file when unpickled, so its absence later means something."""
    canary = tmp_path / "canary"
    handle = pickle.loads(_payload(canary))[0][0]  # noqa: S301  (proving the trap works)
    handle.close()
    assert canary.exists()


def test_pickled_message_is_rejected_and_worker_survives(
    redis_url: str, rclient: redis.Redis, logs: Path, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    env = forwarder_env(redis_url)
    worker = celery_worker(env, logs / "worker.log", concurrency=1)
    app = create_app(Settings(redis_url=redis_url))
    runs = RunLog(rclient)
    with running(worker):
        eventually(lambda: " ready." in worker.output(), 90, message="worker ready")
        task_id = str(uuid.uuid4())
        with Connection(
            redis_url, transport_options=app.conf.broker_transport_options
        ) as connection:
            producer = connection.Producer()
            producer.publish(
                _payload(pwned),
                exchange="",
                routing_key="default",
                content_type="application/x-python-serialize",
                content_encoding="binary",
                serializer=None,
                headers={
                    "lang": "py",
                    "task": "forwarder.ping",
                    "id": task_id,
                    "root_id": task_id,
                    "parent_id": None,
                    "group": None,
                    "retries": 0,
                    "eta": None,
                    "expires": None,
                    "timelimit": [None, None],
                    "argsrepr": "(...)",
                    "kwargsrepr": "{}",
                    "origin": "attacker",
                },
            )
        # The worker takes the message off the queue and refuses it.
        eventually(
            lambda: "Refusing to deserialize untrusted content of type pickle" in worker.output(),
            60,
            message="the worker refusing the pickled message",
        )
        # A normal JSON task still runs on the same worker afterwards.
        ok_id = str(uuid.uuid4())
        runs.queued(ok_id, "forwarder.ping", source="api")
        app.send_task("forwarder.ping", task_id=ok_id, queue="default")
        eventually(
            lambda: (r := runs.get(ok_id)) is not None and r.state == "SUCCESS",
            60,
            message="a JSON task after the pickled one",
        )
        time.sleep(0.5)
        assert worker.alive(), "the worker died"
        assert rclient.llen("forwarder:default") == 0, "the pickled message is still queued"
        assert not pwned.exists(), "the pickled payload was executed"
        # Nothing of the pickled message was run as a task.
        record = runs.get(task_id)
        assert record is None or record.state != "SUCCESS"
        assert not pwned.exists()
