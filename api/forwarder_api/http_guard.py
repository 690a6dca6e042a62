"""Uvicorn's HTTP protocol with the limits it lacks: a request head's size and read deadlines.

Uvicorn's httptools protocol (the one ``uvicorn[standard]`` picks) accepts a request head of
any size and waits for it, and for the body, for ever: one client trickling a byte a minute
holds a connection (and its memory) as long as it likes, and enough of them exhaust the
process's sockets. Its only timer is the keep-alive one, armed after a response. This
protocol closes those doors:

* a request line and headers larger than ``api_max_header_bytes`` get 431 and a closed
  connection, before the head is kept whole in memory;
* a head not complete within ``api_header_timeout`` seconds of the connection (or of a kept-
  alive request's first byte) gets 408 and a closed connection;
* a body not complete within ``api_body_timeout`` seconds of its head gets 408 (or, when the
  app has already begun to answer, a closed connection).

``forwarder api`` runs uvicorn with ``--http forwarder_api.http_guard:GuardedHttpToolsProtocol``
(see ``forwarder_worker.local.cli.component_command``).

Uvicorn has no public setting for any of this (``h11_max_incomplete_event_size`` bounds only
the h11 protocol, ``timeout_keep_alive`` only the idle time between requests), so this module
extends its protocol class and its parser callbacks, which are not a public API. It is the
one place that does: ``tests/api/test_api_hostile_input.py`` runs the real ``forwarder api``
against each limit and fails if a uvicorn release changes what this relies on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from forwarder_api.settings import get_api_settings

log = logging.getLogger("forwarder.api")


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops parsing and reports a parser error."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with a head size limit and head and body read deadlines."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_api_settings()
        self.max_head_bytes = settings.api_max_header_bytes
        self.head_timeout = settings.api_header_timeout
        self.body_timeout = settings.api_body_timeout
        self.head_bytes = 0
        # The deadline of the head or body being read (None: nothing is being read), and
        # what it is for. One timer per connection enforces it lazily: setting a deadline
        # and clearing it, three times per request, are attribute writes; the timer, when
        # it fires, moves itself to a later deadline instead of acting. A timer per request
        # part (scheduled and cancelled three times a request) cost more than all the rest
        # of this protocol.
        self.deadline: float | None = None
        self.deadline_of: tuple[str, float] = ("head", self.head_timeout)
        self.timer: asyncio.TimerHandle | None = None
        self.refusal: tuple[int, str] | None = None

    # The deadline: for the head and then for the body of the request being read.
    def _arm(self, seconds: float, what: str) -> None:
        self.deadline = deadline = self.loop.time() + seconds
        self.deadline_of = (what, seconds)
        if self.timer is not None and self.timer.when() > deadline:
            self.timer.cancel()  # an earlier deadline than the timer's (a shorter timeout)
            self.timer = None
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self._on_timer)

    def _disarm(self) -> None:
        self.deadline = None

    def _on_timer(self) -> None:
        self.timer = None
        if self.deadline is None:
            return  # nothing is being read: the next _arm schedules anew
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            return
        self.deadline = None
        self._read_too_slow(*self.deadline_of)

    def _read_too_slow(self, what: str, seconds: float) -> None:
        if self.transport.is_closing():
            return
        log.warning("%s: %s not received within %g s; closing", self._peer(), what, seconds)
        if what == "body" and self.cycle is not None:
            if self.cycle.response_started:  # the app answered (a 413...) or is answering
                self.transport.close()
                return
            # The app waits for this body: it sees a disconnect, and what it sends is dropped.
            self.cycle.disconnected = True
        self._answer(408, f"request {what} not received within {seconds:g} s")

    def _answer(self, status: int, message: str) -> None:
        """Write a plain-text error with ``Connection: close`` and close the connection."""
        body = message.encode()
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"

    # Protocol and parser callbacks.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # From the connection on: a client that connects and sends nothing is closed too.
        self._arm(self.head_timeout, "head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_bytes = 0
        if self.deadline is None:  # a kept-alive connection's next request
            self._arm(self.head_timeout, "head")

    def _count(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > self.max_head_bytes:
            self.refusal = (
                431,
                f"request head is larger than the {self.max_head_bytes}-byte limit",
            )
            raise _HeadTooLarge

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout, "body")
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        # The connection is the websocket protocol's from here on: no HTTP deadline on it.
        self._disarm()
        super().handle_websocket_upgrade()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # The parser error our callback raised is answered with its own status.
        if self.refusal is None:
            super().send_400_response(msg)
            return
        status, message = self.refusal
        log.warning("%s: %s", self._peer(), message)
        self._answer(status, message)
