"""Fast paths for the interactive round trip: ``POST /tasks/{name}/runs`` and
``GET /runs/{id}`` (and ``?wait=``) handed to their routes' endpoints without going through
FastAPI's router.

A client that runs a task submits it, then polls or long-polls the run, often several times
per run. The routes bind their own arguments (:class:`~forwarder_api.deps.LeanRoute`) and
serialize their own answers, but FastAPI 0.165 still reaches them through its router (which
walks the included routers, twice for the one that matches), a per-request wrapper and the
binding: 60 to 100 µs of CPU per request more than this middleware (in process), and 11 to
22% more of the API's CPU per round trip under the round-trip benchmark's load, which its
targets do not leave room for (bench/REPORT.md, section 4). This ASGI middleware calls the
endpoints themselves (:func:`~forwarder_api.routers.runs.get_run`,
:func:`~forwarder_api.routers.tasks.submit_run`) for exactly the plain, well-formed cases:
an accepted bearer token, no root path, and

* a submission with a JSON body that :class:`~forwarder_api.models.RunRequest` accepts (or
  none), and no query;
* a poll with no query but an in-range ``wait``.

Every other request (no or a wrong token, another content type, a body or query the route
would reject or read differently, another path or method) goes to FastAPI, whose answers
(401, 422...) are the API's own. Errors an endpoint raises are answered as the app's
exception handlers answer them (:func:`~forwarder_api.errors.error_for`). The tests check
that both paths give byte-identical answers.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from forwarder_api.errors import error_for
from forwarder_api.limits import replaying
from forwarder_api.models import RunRequest
from forwarder_api.routers import runs, tasks
from forwarder_api.services import Services

RUNS = f"{runs.router.prefix}/"
TASKS = f"{tasks.router.prefix}/"
SUBMIT_SUFFIX = "/runs"
MAX_NAME = 200
# Plain decimal seconds only: any other spelling is left to FastAPI's own parsing.
_WAIT = re.compile(rb"wait=([0-9]{1,4}(?:\.[0-9]{1,6})?)")


def _route(router: Any, name: str) -> Any:
    """The route FastAPI would have matched, so the metrics label the request the same."""
    return next(r for r in router.routes if getattr(r, "name", None) == name)


GET_RUN = _route(runs.router, "get_run")
SUBMIT_RUN = _route(tasks.router, "submit_run")


def _wait(query: bytes) -> float | None:
    """The ``wait`` of a query that is empty or exactly ``wait=<seconds in range>``; None for
    any other query (FastAPI then parses and validates it)."""
    if not query:
        return 0.0
    matched = _WAIT.fullmatch(query)
    if matched is None:
        return None
    seconds = float(matched[1])
    return seconds if 0 <= seconds <= runs.MAX_WAIT_SECONDS else None


def _name(path: str, prefix: str, suffix: str = "") -> str | None:
    """The one path segment between ``prefix`` and ``suffix``, if that is the path."""
    if not path.startswith(prefix) or not path.endswith(suffix):
        return None
    segment = path[len(prefix) : len(path) - len(suffix)]
    return segment if segment and "/" not in segment and len(segment) <= MAX_NAME else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class FastPaths:
    """Answers well-formed authorized submissions and run polls itself."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    def _authorized(self, scope: Scope) -> bool:
        # As FastAPI's HTTPBearer reads the header, and only the accepting case.
        scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
        token = token.strip()
        return scheme.lower() == "bearer" and bool(token) and self.services.tokens.accepts(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            method, path = scope["method"], scope["path"]
            if method == "GET" and (run_id := _name(path, RUNS)) is not None:
                wait = _wait(scope["query_string"])
                if wait is not None and self._authorized(scope):
                    await self._get_run(run_id, wait, scope, receive, send)
                    return
            elif (
                method == "POST"
                and (name := _name(path, TASKS, SUBMIT_SUFFIX)) is not None
                and not scope["query_string"]
                and self._authorized(scope)
            ):
                await self._submit(name, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _get_run(
        self, run_id: str, wait: float, scope: Scope, receive: Receive, send: Send
    ) -> None:
        scope["route"] = GET_RUN
        try:
            response = await runs.get_run(run_id=run_id, request=Request(scope, receive), wait=wait)
        except Exception as exc:  # noqa: BLE001  (answered as the app's handlers answer it)
            response = error_for(exc)
        await response(scope, receive, send)

    async def _submit(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        run = self._run_request(scope, body)
        if run is None:
            await self.app(scope, replaying(body, receive), send)
            return
        scope["route"] = SUBMIT_RUN
        try:
            response = await tasks.submit_run(name=name, request=Request(scope, receive), body=run)
        except Exception as exc:  # noqa: BLE001  (answered as the app's handlers answer it)
            response = error_for(exc)
        await response(scope, receive, send)

    @staticmethod
    def _run_request(scope: Scope, body: bytes) -> RunRequest | None:
        """The body as the route reads it, or None where the route might read it otherwise
        (not plain JSON, not an object, or not a valid RunRequest: the route answers)."""
        if not body:
            return RunRequest()
        if _header(scope, b"content-type") != "application/json":
            return None
        try:
            value = json.loads(body)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        try:
            return RunRequest.model_validate(value)
        except ValidationError:
            return None
