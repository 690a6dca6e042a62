"""Redis clients built from settings, so password, TLS and timeouts are decided in one place."""

from __future__ import annotations

import ssl
from typing import Any

import redis

from forwarder_worker.settings import Settings


def ssl_options(settings: Settings) -> dict[str, Any] | None:
    """TLS options for ``rediss://`` URLs (verification always on), or None for plain TCP."""
    if not settings.redis_url.startswith("rediss://"):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    return options


def redis_client(settings: Settings, *, blocking: bool = False) -> redis.Redis:
    """A decoded-string client for Forwarder's own keys.

    ``blocking`` clients have no socket read timeout, because they sit in BLPOP for as long as
    the scheduler asks; every other client fails fast so a dead Redis is noticed.
    """
    extra: dict[str, Any] = {}
    if (tls := ssl_options(settings)) is not None:
        extra.update(tls)
    return redis.Redis.from_url(
        settings.effective_redis_url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=None if blocking else 10,
        health_check_interval=30,
        retry_on_timeout=False,
        **extra,
    )
