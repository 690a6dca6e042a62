"""Telling the app that its server was asked to stop (SIGTERM or SIGINT).

On SIGTERM, uvicorn stops accepting connections and waits for the requests in flight. A
long poll (``GET /runs/{id}?wait=``, up to 55 s) would hold it past a pod's default 30 s
grace period. The pod would then be killed with the request unanswered. The app has no ASGI
event for "stopping" (the lifespan's shutdown comes only after the requests in flight end),
so it adds itself in front of the server's own signal handler: the handler runs the app's
callback on the event loop, then hands the signal on to the server unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signal(callback: Callable[[], None]) -> Callable[[], None]:
    """Run ``callback`` on the running loop when a stop signal arrives, before the server's
    handler sees it. Returns the undo (the lifespan's shutdown calls it).

    It only wraps a server's handler: where a stop signal still has the default action (no
    server handles it, as under a test client) or handlers cannot be set (not the main
    thread), it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Callable[[int, FrameType | None], object]] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        # Signal handlers run between bytecodes of the main thread: schedule, don't run.
        with contextlib.suppress(RuntimeError):  # the loop has already closed
            loop.call_soon_threadsafe(callback)
        previous[signum](signum, frame)

    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if callable(current):
            previous[signum] = current
            signal.signal(signum, handler)

    def undo() -> None:
        for signum, handed_on in previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, handed_on)

    return undo
