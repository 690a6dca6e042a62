"""How many messages wait in each Celery queue, read straight from the broker's lists.

kombu's redis transport keeps a queue in one list per priority step: the queue's own name
for step 0 and ``<queue>\\x06\\x16<step>`` for the others (``priority_steps``, [0, 3, 6, 9] by
default), every key under the transport's ``global_keyprefix``. A length that reads only the
queue's own key, or forgets the prefix (as Flower before 2.0 did), is wrong. The names
are worked out here once, from the transport class and options the app really uses, and the
lengths are then read in one pipelined round trip.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
from celery import Celery


class QueueLengths:
    """The length of Celery queues, summed over their priority lists."""

    def __init__(self, app: Celery, client: redis.Redis) -> None:
        self.client = client
        conf = app.conf
        # Building a Connection and its transport object connects to nothing.
        with app.connection_for_read() as connection:
            channel = connection.transport.Channel
            options = connection.transport_options
        self.prefix: str = options.get("global_keyprefix", channel.global_keyprefix) or ""
        self.steps: list[int] = sorted(options.get("priority_steps", channel.priority_steps))
        self.sep: str = channel.sep
        self.configured: tuple[str, ...] = tuple(
            dict.fromkeys(
                [conf.task_default_queue, *(queue.name for queue in conf.task_queues or ())]
            )
        )
        """The queues the app's settings name (its default queue and ``task_queues``)."""

    def lists(self, queue: str) -> list[str]:
        """The Redis lists of ``queue``, one per priority step (kombu's ``_q_for_pri``)."""
        return [
            self.prefix + (f"{queue}{self.sep}{step}" if step else queue) for step in self.steps
        ]

    def read(self, also: Iterable[str] = ()) -> dict[str, int]:
        """Messages waiting per queue: the configured ones and ``also`` (the queues the
        schedules name), in one round trip."""
        queues = list(dict.fromkeys([*self.configured, *also]))
        with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                for key in self.lists(queue):
                    pipe.llen(key)
            lengths = pipe.execute()
        per_queue = len(self.steps)
        return {
            queue: sum(lengths[i * per_queue : (i + 1) * per_queue])
            for i, queue in enumerate(queues)
        }
