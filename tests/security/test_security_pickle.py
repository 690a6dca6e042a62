"""A pickle-serialized message injected into the broker is refused and never executed.

The payload would create a file if anything unpickled it (the test proves that first, on a
different path). It goes into the worker's queue with content type
``application/x-python-serialize`` and a valid protocol-2 task header, so only the worker's
JSON-only ``accept_content`` stands between it and execution. Afterwards the file must not
exist, the worker must be the same live process, and it must still run a normal task.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import redis
from forwarder_worker import Core
from forwarder_worker.settings import Settings
from kombu import Connection
from kombu.serialization import loads
from support.processes import celery_worker, eventually, forwarder_env, running

PICKLE = "application/x-python-serialize"


def _payload(path: Path) -> bytes:
    """A protocol-2 pickle of the task body ``((open(path, "w"),), {}, {})``: whatever
    unpickles it creates ``path``. Assembled opcode by opcode, so that no code of ours imports
    pickle (the project is JSON only)."""

    def text(value: str) -> bytes:
        data = value.encode()
        return b"X" + len(data).to_bytes(4, "little") + data  # BINUNICODE

    return b"".join(
        (
            b"\x80\x02",  # PROTO 2
            b"cbuiltins\nopen\n",  # GLOBAL builtins.open
            text(str(path)) + text("w") + b"\x86",  # TUPLE2: its arguments
            b"R",  # REDUCE: open(path, "w"), the booby trap
            b"\x85}}\x87",  # TUPLE1 (args), EMPTY_DICT x2 (kwargs, embed), TUPLE3
            b".",  # STOP
        )
    )


def test_the_payload_is_live(tmp_path: Path) -> None:
    """A consumer that accepted pickle would run the payload (through kombu, as a worker
    would), so its absence later means something."""
    canary = tmp_path / "canary"
    body = loads(_payload(canary), PICKLE, "binary", accept={PICKLE})
    body[0][0].close()
    assert canary.exists()


def test_pickled_message_is_rejected_and_worker_survives(
    redis_url: str, rclient: redis.Redis, logs: Path, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    env = forwarder_env(redis_url)
    worker = celery_worker(env, logs / "worker.log", concurrency=1)
    core = Core.from_settings(Settings(redis_url=redis_url))
    app, runs = core.app, core.runs
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
                content_type=PICKLE,
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
