"""Process settings, read once from ``FORWARDER_*`` environment variables.

Every component reads the same settings class, so a deployment configures Redis, the key
prefix and limits in one place. Secrets (the Redis password) come from env vars or files
mounted from Kubernetes Secrets; nothing secret has a default.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def split_csv(value: object) -> object:
    """Read ``a,b`` as well as a JSON list for list settings: env vars are easier as CSV."""
    if not isinstance(value, str):
        return value
    stripped = value.strip()
    if stripped.startswith("["):
        with contextlib.suppress(ValueError):
            return json.loads(stripped)
    return [item.strip() for item in stripped.split(",") if item.strip()]


def secret_value(value: SecretStr | None, file: Path | None) -> str | None:
    """A secret given in an env var, else read from its mounted file, else None."""
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        return file.read_text().strip()
    return None


class Settings(BaseSettings):
    """Settings shared by every Forwarder process."""

    model_config = SettingsConfigDict(env_prefix="FORWARDER_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis for broker, results, schedules and run records. ``rediss://`` turns TLS on."""

    redis_password: SecretStr | None = None
    """Overrides any password in ``redis_url``, so the URL can live in a ConfigMap and the
    password in a Secret."""

    redis_password_file: Path | None = None
    """A file holding the Redis password (a mounted Secret); read when ``redis_password`` is
    not set."""

    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Redis Sentinel addresses (``FORWARDER_REDIS_SENTINELS=host:26379,host2:26379``). When
    set, every client asks them for the master of ``redis_sentinel_master`` and follows a
    failover; ``redis_url`` is not used."""

    redis_sentinel_master: str = "mymaster"
    """The name the sentinels monitor the master under."""

    redis_sentinel_db: int = Field(default=0, ge=0)
    """The database number on the master, in Sentinel mode (``redis_url`` carries it
    otherwise)."""

    redis_sentinel_password: SecretStr | None = None
    """The sentinels' own password (their ``requirepass``), when they ask for one; the master
    keeps using ``redis_password``."""

    redis_sentinel_password_file: Path | None = None
    """A file holding the sentinels' password (a mounted Secret), read when
    ``redis_sentinel_password`` is not set."""

    redis_tls: bool = False
    """TLS to the sentinels and the master in Sentinel mode. In URL mode a ``rediss://`` URL
    turns TLS on."""

    redis_tls_ca_file: Path | None = None
    """CA bundle that verifies the Redis server (and the sentinels); the system store when
    unset."""

    redis_tls_cert_file: Path | None = None
    """A client certificate (PEM) for servers that require one (``tls-auth-clients yes``)."""

    redis_tls_key_file: Path | None = None
    """The private key of ``redis_tls_cert_file``, when it is not in the same file."""

    key_prefix: str = "forwarder:"
    """Prefix of every key Forwarder writes, so several installs can share one Redis."""

    task_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Modules imported by workers to register user tasks (``FORWARDER_TASK_MODULES=a,b``)."""

    http_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Hosts, ``*.suffix`` patterns or CIDRs that ``forwarder.http`` may call. Empty allows
    nothing: a deployment names its targets explicitly (no SSRF into the cluster)."""

    http_max_body_bytes: int = Field(default=65536, ge=0)
    """Response bytes ``forwarder.http`` keeps; the rest is cut and flagged as truncated."""

    task_time_limit: int = Field(default=600, ge=1)
    """Hard time limit per task, in seconds."""

    task_soft_time_limit: int = Field(default=540, ge=1)
    """Soft time limit per task (raises inside the task), in seconds."""

    result_expires: int = Field(default=7 * 24 * 3600, ge=1)
    """Seconds Celery results and run records are kept (a record: after its last change); the
    histories drop ids created longer ago. The bound on everything kept per run; keep it well
    above the longest run (and the backfill window wanted). Seconds are allowed for tests."""

    result_max_chars: int = Field(default=2048, ge=64)
    """Characters of a task's result kept in its run record."""

    received_write_delay: float = Field(default=0.005, ge=0, le=1)
    """Longest a worker holds a run's RECEIVED transition, in seconds: those received within
    it are written together, one round trip for many. A run waiting in the worker (prefetched,
    or for its countdown) shows RECEIVED this much later; a run that starts at once records
    its receipt with its start. 0 writes each as it is received."""

    run_history_limit: int = Field(default=100, ge=1)
    """Runs kept per schedule in Redis (status shows ``runHistoryLimit`` of them)."""

    global_history_limit: int = Field(default=10000, ge=10)
    """Runs kept in the global history that ``GET /runs`` reads."""

    duration_task_limit: int = Field(default=200, ge=1)
    """Tasks whose run durations the durations hash has room for
    (``forwarder_task_duration_seconds``), each with all its buckets; a task first seen once
    the hash is full is not counted, so renamed tasks cannot pile up for ever."""

    flower_max_tasks: int = Field(default=10000, ge=1)
    """Tasks Flower keeps in memory (its ``--max_tasks``; the least recently updated go)."""

    flower_max_workers: int = Field(default=100, ge=1)
    """Workers Flower keeps in memory (its ``--max_workers``): a worker pod's restart is a new
    hostname, so the stopped ones would otherwise be kept."""

    beat_lock_timeout: float = Field(default=10.0, gt=0.5)
    """Seconds before a standby beat takes over from a holder that stopped renewing."""

    beat_max_loop_interval: float = Field(default=30.0, gt=0)
    """Longest a beat waits between ticks when nothing is due and nothing changes."""

    beat_batch_size: int = Field(default=500, ge=1)
    """Due entries handled per dispatch batch (one pipelined round trip per stage)."""

    @field_validator("task_modules", "http_allow", "redis_sentinels", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return split_csv(value)

    @field_validator("redis_sentinels")
    @classmethod
    def _host_ports(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"sentinel address {address!r} is not host:port")
        return value

    @property
    def sentinel_mode(self) -> bool:
        """True when the master is found through ``redis_sentinels``."""
        return bool(self.redis_sentinels)

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``redis_sentinels`` as (host, port) pairs."""
        pairs = (address.rpartition(":") for address in self.redis_sentinels)
        return [(host.strip("[]"), int(port)) for host, _, port in pairs]

    def redis_sentinel_password_value(self) -> str | None:
        """The sentinels' password from the env var or the mounted file, if any."""
        return secret_value(self.redis_sentinel_password, self.redis_sentinel_password_file)

    @property
    def uses_tls(self) -> bool:
        """Whether Redis is reached over TLS: ``redis_tls`` with sentinels, ``rediss://``
        without."""
        if self.sentinel_mode:
            return self.redis_tls
        return self.redis_url.startswith("rediss://")

    def redis_password_value(self) -> str | None:
        """The Redis password from the env var or the mounted file, if any."""
        return secret_value(self.redis_password, self.redis_password_file)

    @property
    def effective_redis_url(self) -> str:
        """``redis_url`` with the configured password put in; never log this value."""
        password = self.redis_password_value()
        if password is None:
            return self.redis_url
        parts = urlsplit(self.redis_url)
        host = parts.hostname or "127.0.0.1"
        netloc = f"{quote(parts.username or '', safe='')}:{quote(password, safe='')}@{host}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    @property
    def celery_redis_url(self) -> str:
        """The URL Celery's broker and result backend are given: ``effective_redis_url``, or
        in Sentinel mode kombu's and Celery's ``sentinel://[:password@]host:port/db`` list
        (``;``-separated), whose password is the master's; never log this value."""
        if not self.sentinel_mode:
            return self.effective_redis_url
        password = self.redis_password_value()
        auth = f":{quote(password, safe='')}@" if password is not None else ""
        return ";".join(
            f"sentinel://{auth}{address}/{self.redis_sentinel_db}"
            for address in self.redis_sentinels
        )

    @property
    def redacted_redis_url(self) -> str:
        """Where Redis is, fit for logs: ``redis_url`` with any password replaced by ``***``,
        or the sentinels and the master's name."""
        if self.sentinel_mode:
            return (
                f"sentinel master {self.redis_sentinel_master!r} via "
                + ",".join(self.redis_sentinels)
                + f" db {self.redis_sentinel_db}"
            )
        parts = urlsplit(self.redis_url)
        if parts.password is None:
            return self.redis_url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class FlowerSettings(BaseSettings):
    """How to reach Flower's REST API, for every component that reads it (api, history)."""

    model_config = SettingsConfigDict(env_prefix="FORWARDER_", extra="ignore")

    flower_url: str = "http://127.0.0.1:7501"
    """Flower's base URL."""

    flower_user: str | None = None
    """Flower's basic-auth user."""

    flower_password: SecretStr | None = None
    """Flower's basic-auth password."""

    flower_password_file: Path | None = None
    """A file holding Flower's password (a mounted Secret), read when the password is unset."""

    flower_timeout: float = Field(default=10.0, gt=0, le=120)
    """Seconds a Flower request may take."""

    def flower_auth(self) -> tuple[str, str] | None:
        """Flower's basic-auth credentials, if configured."""
        password = secret_value(self.flower_password, self.flower_password_file)
        if self.flower_user is None or password is None:
            return None
        return self.flower_user, password


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
