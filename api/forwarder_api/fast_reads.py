"""The run-poll fast path: ``GET /runs/{id}`` (and ``?wait=``) answered without FastAPI's
per-request machinery, for the requests clients repeat most.

A client waiting for a run polls it, often several times per run; FastAPI's routing,
dependency solving and response validation cost more CPU than the Redis read itself. This
ASGI middleware answers exactly the plain, well-formed case: an accepted bearer token, a run
id, no query but an in-range ``wait``, a run that exists and whose result is whole. Every
other request (no or a wrong token, other query parameters, a bad ``wait``, an unknown run, a
truncated result, another path or method) goes to the FastAPI route, which stays the
reference and the OpenAPI description: its answers (401, 404, 422...) are the API's own, and
the tests check that both paths give byte-identical bodies for the same run.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import redis
from pydantic import TypeAdapter
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from forwarder_api.errors import error_response
from forwarder_api.models import Run
from forwarder_api.routers.runs import MAX_WAIT_SECONDS, router, to_run
from forwarder_api.services import Services

log = logging.getLogger("forwarder.api")

PREFIX = f"{router.prefix}/"
RUN_JSON = TypeAdapter(Run)
# The route FastAPI would have matched, so the metrics label the request the same way.
# Plain decimal seconds only: any other spelling is left to FastAPI's own parsing.
_WAIT = re.compile(rb"wait=([0-9]{1,4}(?:\.[0-9]{1,6})?)")
ROUTE = next(r for r in router.routes if getattr(r, "name", None) == "get_run")


def _wait(query: bytes) -> float | None:
    """The ``wait`` of a query that is empty or exactly ``wait=<seconds in range>``; None for
    any other query (FastAPI then parses and validates it)."""
    if not query:
        return 0.0
    matched = _WAIT.fullmatch(query)
    if matched is None:
        return None
    seconds = float(matched[1])
    return seconds if 0 <= seconds <= MAX_WAIT_SECONDS else None


class RunPollFastPath:
    """Answers well-formed authorized ``GET /runs/{id}`` requests itself."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    def _token(self, scope: Scope) -> bool:
        for key, value in scope["headers"]:
            if key == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                token = token.strip()
                return (
                    scheme.lower() == "bearer"
                    and bool(token)
                    and self.services.tokens.accepts(token)
                )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or scope.get("root_path")
            or not scope["path"].startswith(PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        run_id = scope["path"][len(PREFIX) :]
        wait = _wait(scope["query_string"])
        if (
            not run_id
            or "/" in run_id
            or len(run_id) > 200
            or wait is None
            or not self._token(scope)
        ):
            await self.app(scope, receive, send)
            return
        watch = self.services.watch
        try:
            record = await watch.wait(run_id, wait) if wait else await watch.get(run_id)
        except redis.RedisError as exc:
            # What the app's Redis error handler answers.
            log.warning("Redis unavailable: %s", exc)
            scope["route"] = ROUTE
            await error_response(503, f"Redis is unavailable: {exc}")(scope, receive, send)
            return
        if record is None:
            await self.app(scope, receive, send)  # the route's 404
            return
        run = to_run(record, show_traceback=self.services.settings.api_show_traceback)
        if run.result_truncated and record.state == "SUCCESS":
            await self.app(scope, receive, send)  # the route fetches the whole result
            return
        scope["route"] = ROUTE
        body: Any = RUN_JSON.dump_json(run, by_alias=True)
        await Response(content=body, media_type="application/json")(scope, receive, send)
