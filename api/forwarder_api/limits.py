"""Request body limit: a body larger than the configured size gets 413 before any handler
parses it, whether it announces its length or streams in chunks.

FastAPI 0.165 and Starlette 1.10 have a limit of their own (``FastAPI(max_body_size=...)``,
``RequestBodyLimitMiddleware``), not used here: it counts the bytes as the app reads them, so
a route that does not read its body runs whole with an oversized one, its token check and its
work (a revoke, a delete) included, and then its answer is replaced by a plain-text
``Content Too Large``, not the API's one JSON shape (:mod:`forwarder_api.errors`)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forwarder_api.errors import error_response


class BodySizeLimit:
    """Reject request bodies over ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, f"request body is larger than the {self.max_bytes}-byte limit"
        )
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                announced = int(length)
            except ValueError:
                announced = -1
            if announced > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if announced >= 0:
                await self.app(scope, receive, send)
                return
        # No (usable) length: read the body up to the limit, then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replaying(b"".join(chunks), receive), send)


def replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` that first gives back ``body``, already read from the original one."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
