"""Redis clients built from settings, so password, TLS, Sentinel and timeouts are decided in
one place: Forwarder's own clients (sync, blocking and asyncio) and the options Celery's
broker and result backend are given.

In Sentinel mode (``FORWARDER_REDIS_SENTINELS``) every client is redis-py's (or kombu's, or
Celery's) sentinel-managed one: a new connection asks the sentinels where the master is, and
a connection to a master that died or was demoted is dropped, so each component follows a
failover on its next reconnect, like after a Redis restart.
"""

from __future__ import annotations

import ssl
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from forwarder_worker.settings import Settings


def ssl_options(settings: Settings) -> dict[str, Any] | None:
    """TLS options (verification always on) in the form redis-py, kombu's ``broker_use_ssl``
    and Celery's ``redis_backend_use_ssl`` all take, or None for plain TCP."""
    if not settings.uses_tls:
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    files = {
        "ssl_ca_certs": settings.redis_tls_ca_file,
        "ssl_certfile": settings.redis_tls_cert_file,
        "ssl_keyfile": settings.redis_tls_key_file,
    }
    options.update({key: str(path) for key, path in files.items() if path is not None})
    return options


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """How to talk to the sentinels themselves: their password and TLS, and short timeouts
    so a dead sentinel is skipped rather than waited on (the blocking client has none)."""
    options: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 5}
    if (password := settings.redis_sentinel_password_value()) is not None:
        options["password"] = password
    if (tls := ssl_options(settings)) is not None:
        options.update(ssl=True, **tls)
    return options


def celery_transport_options(settings: Settings) -> dict[str, Any]:
    """What kombu's sentinel transport and Celery's sentinel result backend need besides the
    ``sentinel://`` URLs (``master_name``, ``sentinel_kwargs``); nothing in URL mode."""
    if not settings.sentinel_mode:
        return {}
    return {
        "master_name": settings.redis_sentinel_master,
        "sentinel_kwargs": sentinel_kwargs(settings),
    }


class RedisCredentialsRejected(RuntimeError):
    """Redis (or a sentinel) answered but refused our credentials, a password or a TLS
    certificate: retrying cannot help, so stop and say so."""


def _tls_refusal(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error about a certificate (ours or the server's) behind ``exc``, if any: a
    wrong CA, a host name the certificate does not name, a client certificate missing or not
    trusted. A connection reset mid-handshake is not one; it is retried like any outage."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and "CERTIFICATE" in str(seen).upper():
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _refusal(exc: redis.RedisError, password_setting: str, password: str | None) -> str | None:
    """One line saying which setting to fix, when ``exc`` is a refusal rather than an
    outage; ``password_setting`` names the password the server asked for."""
    if isinstance(exc, redis.AuthenticationError):
        verb = "set" if password is None else "check"
        return (
            f"refused the connection ({exc}); {verb} {password_setting} or {password_setting}_FILE"
        )
    if (tls := _tls_refusal(exc)) is not None:
        return (
            f"failed TLS verification ({tls.reason or tls}); check FORWARDER_REDIS_TLS_CA_FILE"
            " (and FORWARDER_REDIS_TLS_CERT_FILE/KEY_FILE if it requires a client certificate)"
        )
    return None


def check_credentials(settings: Settings) -> None:
    """Raise RedisCredentialsRejected if Redis (or, in Sentinel mode, a sentinel) refuses
    the configured (or missing) password or TLS certificates.

    An unreachable Redis passes: every component waits for it and reconnects by itself, but a
    wrong password or CA would only produce the same error on every retry.
    """
    for host, port in settings.sentinel_addresses():
        with redis.Redis(host=host, port=port, **sentinel_kwargs(settings)) as sentinel:
            try:
                sentinel.ping()
            except redis.RedisError as exc:
                line = _refusal(
                    exc,
                    "FORWARDER_REDIS_SENTINEL_PASSWORD",
                    settings.redis_sentinel_password_value(),
                )
                if line is not None:
                    raise RedisCredentialsRejected(f"Redis sentinel {host}:{port} {line}") from None
    client = redis_client(settings)
    try:
        client.ping()
    except redis.RedisError as exc:
        line = _refusal(exc, "FORWARDER_REDIS_PASSWORD", settings.redis_password_value())
        if line is not None:
            raise RedisCredentialsRejected(
                f"Redis at {settings.redacted_redis_url} {line}"
            ) from None
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


def _master_options(settings: Settings) -> dict[str, Any]:
    """What a URL says in URL mode, for the master in Sentinel mode: database, password and
    TLS (``ssl`` picks redis-py's sentinel-managed TLS connection)."""
    return {
        "db": settings.redis_sentinel_db,
        "password": settings.redis_password_value(),
        "ssl": settings.uses_tls,
    }


def redis_client(settings: Settings, *, blocking: bool = False) -> redis.Redis:
    """A decoded-string client for Forwarder's own keys.

    ``blocking`` clients have no socket read timeout, because they sit in BLPOP for as long as
    the scheduler asks; every other client fails fast so a dead Redis is noticed.
    """
    options = _client_options(settings, blocking=blocking)
    if settings.sentinel_mode:
        sentinel = redis.sentinel.Sentinel(
            settings.sentinel_addresses(), sentinel_kwargs=sentinel_kwargs(settings)
        )
        return sentinel.master_for(
            settings.redis_sentinel_master, **options, **_master_options(settings)
        )
    return redis.Redis.from_url(settings.effective_redis_url, **options)


class BlockingSentinelConnectionPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """redis-py's sentinel-managed asyncio pool that waits for a free connection, as the
    URL mode's :class:`redis.asyncio.BlockingConnectionPool` does, instead of failing with
    "Too many connections" (redis-py offers the two separately)."""


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
    the first request on each would fail although Redis is back (or, with sentinels, has
    moved to the promoted replica)."""
    options = {
        "max_connections": ASYNC_POOL_SIZE,
        "timeout": ASYNC_POOL_WAIT,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        **_client_options(settings, blocking=False),
    }
    if settings.sentinel_mode:
        sentinel = redis.asyncio.sentinel.Sentinel(
            settings.sentinel_addresses(), sentinel_kwargs=sentinel_kwargs(settings)
        )
        client: redis.asyncio.Redis = sentinel.master_for(
            settings.redis_sentinel_master,
            connection_pool_class=BlockingSentinelConnectionPool,
            **options,
            **_master_options(settings),
        )
        return client
    pool = redis.asyncio.BlockingConnectionPool.from_url(settings.effective_redis_url, **options)
    return redis.asyncio.Redis.from_pool(pool)
