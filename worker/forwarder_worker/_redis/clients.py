"""Redis clients built from settings, so password, TLS and timeouts are decided in one place."""

from __future__ import annotations

import ssl
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from forwarder_worker.settings import Settings


def ssl_options(settings: Settings) -> dict[str, Any] | None:
    """TLS options for ``rediss://`` URLs (verification always on), or None for plain TCP."""
    if not settings.redis_url.startswith("rediss://"):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    return options


class RedisCredentialsRejected(RuntimeError):
    """Redis answered but refused our credentials: retrying cannot help, so stop and say so."""


def check_credentials(settings: Settings) -> None:
    """Raise RedisCredentialsRejected if Redis refuses the configured (or missing) password.

    An unreachable Redis passes: every component waits for it and reconnects by itself, but a
    wrong or missing password would only produce the same error on every retry.
    """
    client = redis_client(settings)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        hint = (
            "set FORWARDER_REDIS_PASSWORD or FORWARDER_REDIS_PASSWORD_FILE"
            if settings.redis_password_value() is None
            else "check FORWARDER_REDIS_PASSWORD or FORWARDER_REDIS_PASSWORD_FILE"
        )
        raise RedisCredentialsRejected(
            f"Redis at {settings.redacted_redis_url} refused the connection ({exc}); {hint}"
        ) from None
    except redis.RedisError:
        pass
    finally:
        client.close()


def _client_options(settings: Settings, *, blocking: bool) -> dict[str, Any]:
    """Timeouts, health checks and TLS shared by the sync and asyncio clients."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 5,
        "socket_timeout": None if blocking else 10,
        "health_check_interval": 30,
        "retry_on_timeout": False,
    }
    if (tls := ssl_options(settings)) is not None:
        options.update(tls)
    return options


def redis_client(settings: Settings, *, blocking: bool = False) -> redis.Redis:
    """A decoded-string client for Forwarder's own keys.

    ``blocking`` clients have no socket read timeout, because they sit in BLPOP for as long as
    the scheduler asks; every other client fails fast so a dead Redis is noticed.
    """
    return redis.Redis.from_url(
        settings.effective_redis_url, **_client_options(settings, blocking=blocking)
    )


# The asyncio client's pool: at most this many connections; a request beyond them waits up
# to ASYNC_POOL_WAIT seconds for one instead of failing with "Too many connections".
ASYNC_POOL_SIZE = 100
ASYNC_POOL_WAIT = 10.0


def async_redis_client(settings: Settings) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`redis_client`, for code running on an event loop (the
    api's run reads and long polls), with the same password, TLS and timeouts.

    Its pool blocks when all its connections are busy (many long polls woken at once must
    queue, not fail), and a command that meets a closed connection is sent once more on a
    fresh one: after a Redis restart every pooled connection is stale, and without the retry
    the first request on each would fail although Redis is back."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.effective_redis_url,
        max_connections=ASYNC_POOL_SIZE,
        timeout=ASYNC_POOL_WAIT,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        **_client_options(settings, blocking=False),
    )
    return redis.asyncio.Redis.from_pool(pool)
