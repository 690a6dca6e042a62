"""A process "killed" at a chosen point, for tests of what a crash leaves behind in Redis."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import kombu.transport.redis
import pytest


class Killed(BaseException):
    """Stands for a SIGKILL: raised where the process dies, so nothing after it runs."""


@contextlib.contextmanager
def killed_at_next_publish(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within, this process dies at its next flush of a kombu Redis publish batch (the
    pipeline that sends messages and task-sent events); the death ends the block quietly,
    and later code runs normally again."""

    def die(self: Any) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(kombu.transport.redis.PublishBatch, "flush", die)
        with contextlib.suppress(Killed):
            yield
