"""Errors the API answers with: one JSON shape, ``{"detail": "<message>"}``, and the right status.

Services raise these (or let Redis/broker errors through); the handlers registered here turn
them into responses, so no route needs try/except boilerplate and nothing ends as a bare 500.
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kombu.exceptions import KombuError

log = logging.getLogger("forwarder.api")


class ApiError(Exception):
    """An error with an HTTP status and a message meant for the client."""

    status = 500
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ApiError):
    """The named thing does not exist (or is not allowed, which reads the same)."""

    status = 404


class Forbidden(ApiError):
    """The API may not act there: a namespace it does not serve, or one its RBAC refuses."""

    status = 403


class Conflict(ApiError):
    """The request clashes with the current state (exists already, already finished...)."""

    status = 409


class Invalid(ApiError):
    """The request is well-formed JSON but its content is not acceptable."""

    status = 422


class Unavailable(ApiError):
    """A backend this route needs (Redis, Flower, Kubernetes) cannot be reached."""

    status = 503


class BadGateway(ApiError):
    """A backend answered, but not in a way the API can use."""

    status = 502


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The API's error body."""
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


async def _handle(_: Request, exc: Exception) -> JSONResponse:
    # ApiError, Redis and broker errors by their kind; anything else is a bug: logged with
    # its traceback, and still answered in the API's error shape.
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, exc.headers)
    if isinstance(exc, redis.RedisError):
        log.warning("Redis unavailable: %s", exc)
        return error_response(503, f"Redis is unavailable: {exc}")
    if isinstance(exc, KombuError):
        log.warning("broker unavailable: %s", exc)
        return error_response(503, f"the task broker is unavailable: {exc}")
    log.error("unhandled error", exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); see the api log")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    # KombuError: a lost connection (OperationalError) or a failed publish batch alike.
    for kind in (Exception, ApiError, redis.RedisError, KombuError):
        app.add_exception_handler(kind, _handle)
