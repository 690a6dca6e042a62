"""Body errors wait for authentication on protected routes.

FastAPI decodes and validates a request body before it runs the route's dependencies, so an
anonymous caller of a protected route would get 400/422 (and learn the body's schema) where
it is owed a 401. These handlers check the token first on routes that require one.

A 422 names each problem's place and reason but does not echo the offending input back, as
FastAPI's own handler does: a hostile input (``1e999`` is infinity, which strict JSON cannot
write) would turn the answer itself into a 500, and a megabyte body would come back whole.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from forwarder_api.auth import Unauthorized, bearer, check_token
from forwarder_api.deps import require_token, services_of
from forwarder_api.errors import error_response


def _requires_token(request: Request) -> bool:
    route = request.scope.get("route")
    return isinstance(route, APIRoute) and any(
        dep.dependency is require_token for dep in route.dependencies
    )


async def _unauthorized_first(request: Request) -> JSONResponse | None:
    """A 401 for a protected route called without a valid token, else None."""
    if not _requires_token(request):
        return None
    try:
        check_token(services_of(request).tokens, await bearer(request))
    except Unauthorized as exc:
        return error_response(exc.status, exc.message, exc.headers)
    return None


async def validation_error(request: Request, exc: Exception) -> Response:
    """422 for a bad body, once the caller is known to hold a valid token."""
    if not isinstance(exc, RequestValidationError):
        raise TypeError(f"validation_error handles RequestValidationError, not {exc!r}")
    errors = [{k: v for k, v in error.items() if k != "input"} for error in exc.errors()]
    return await _unauthorized_first(request) or JSONResponse(
        {"detail": jsonable_encoder(errors)}, status_code=422
    )


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own HTTP errors (a body it cannot parse is a 400), after the same check."""
    if not isinstance(exc, StarletteHTTPException):
        raise TypeError(f"http_error handles HTTPException, not {exc!r}")
    return await _unauthorized_first(request) or await http_exception_handler(request, exc)


def install_auth_first_handlers(app: FastAPI) -> None:
    """Register both handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
