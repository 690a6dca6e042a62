"""``forwarder.http``: forward one HTTP request, guarded by an allow-list checked before
connecting.

The allow-list (``FORWARDER_HTTP_ALLOW``) names hosts (``api.example.com``), host suffixes
(``*.example.com``), IPs or CIDRs (``10.1.0.0/16``), each optionally with a port
(``127.0.0.1:7500``, ``[::1]:8080``). It is empty by default, which allows nothing, so a task
cannot reach into the cluster (or the cloud metadata service) unless a deployment says so.

A host named by a host entry is trusted, unless it resolves to loopback, link-local or
another special address that no IP entry allows. Any other name is allowed only if every
address it resolves to is allowed by an IP entry, and then the connection goes to the
address that was checked (no DNS rebinding between check and connect). Redirects are
followed by hand, each hop checked the same way.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx2
from celery import Task, shared_task

from forwarder_worker.core import require_core

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_REDIRECTS = 5
_WITH_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:/\[\]]+)):(?P<port>\d+)$")


class TargetNotAllowed(ValueError):
    """The target is outside the http allow-list; nothing was sent."""


@dataclass(frozen=True)
class AllowRule:
    """One allow-list entry."""

    host: str | None = None  # exact host, or ".suffix" for *.suffix
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> AllowRule:
        """Read ``host``, ``*.suffix``, ``ip``, ``cidr``, each with an optional ``:port``."""
        raw, port = text.strip().lower(), None
        if "/" not in raw and (match := _WITH_PORT.match(raw)):
            raw, port = match["v6"] or match["host"], int(match["port"])
        try:
            return cls(network=ipaddress.ip_network(raw, strict=False), port=port)
        except ValueError:
            pass
        if raw.startswith("*."):
            return cls(host=raw[1:], port=port)
        if not raw or not re.fullmatch(r"[a-z0-9.-]+", raw):
            raise ValueError(f"http allow-list entry {text!r} is not a host, *.suffix or CIDR")
        return cls(host=raw, port=port)

    def matches_name(self, host: str, port: int) -> bool:
        """Whether a host entry allows ``host:port``."""
        if self.host is None or (self.port is not None and self.port != port):
            return False
        return host == self.host or (self.host.startswith(".") and host.endswith(self.host))

    def matches_address(self, address: IPAddress, port: int) -> bool:
        """Whether an IP entry allows ``address:port``."""
        if self.network is None or (self.port is not None and self.port != port):
            return False
        return address.version == self.network.version and address in self.network


def _special(address: IPAddress) -> bool:
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetNotAllowed(f"cannot resolve {host!r}: {exc.strerror}") from None
    return sorted({ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}, key=str)


def check_target(url: str, allow: list[str]) -> tuple[str, IPAddress]:
    """Return ``(host, address to connect to)`` for an allowed ``url``, or raise
    TargetNotAllowed naming the reason. Nothing is sent to the target."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetNotAllowed(f"{url!r} is not an http(s) URL with a host")
    host = parts.hostname.lower().rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    rules = [AllowRule.parse(item) for item in allow]
    addresses = resolve(host, port)
    if not addresses:
        raise TargetNotAllowed(f"{host!r} resolves to no address")
    by_name = any(rule.matches_name(host, port) for rule in rules)
    for address in addresses:
        by_address = any(rule.matches_address(address, port) for rule in rules)
        if by_address or (by_name and not _special(address)):
            continue
        why = "is not in FORWARDER_HTTP_ALLOW" if not by_name else "is a special address"
        raise TargetNotAllowed(f"target {host}:{port} ({address}) {why}; refused before connecting")
    return host, addresses[0]


def forward_request(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    json: Any = None,
    body: str | None = None,
    timeout: float = 30.0,
    allow: list[str],
    max_body: int = 65536,
) -> dict[str, Any]:
    """Send one request (following allowed redirects) and return status, headers and a body
    of at most ``max_body`` bytes."""
    if json is not None and body is not None:
        raise ValueError("give json or body, not both")
    method = method.upper()
    with httpx2.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            host, address = check_target(url, allow)
            parts = urlsplit(url)
            literal = f"[{address}]" if address.version == 6 else str(address)
            netloc = f"{literal}:{parts.port}" if parts.port else literal
            pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
            send_headers = {**(headers or {}), "Host": parts.netloc.rsplit("@", 1)[-1]}
            extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
            request = client.build_request(
                method,
                pinned,
                headers=send_headers,
                json=json,
                content=body.encode() if body is not None else None,
                extensions=extensions,
            )
            response = client.send(request, stream=True)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    if response.status_code in (301, 302, 303):
                        method, json, body = (
                            ("GET", None, None) if method != "HEAD" else (method, None, None)
                        )
                    continue
                chunks, size, truncated = [], 0, False
                for chunk in response.iter_bytes():
                    if size + len(chunk) > max_body:
                        chunks.append(chunk[: max_body - size])
                        truncated = True
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                return {
                    "url": url,
                    "status": response.status_code,
                    "headers": dict(response.headers),
                    "body": b"".join(chunks).decode(response.encoding or "utf-8", "replace"),
                    "truncated": truncated,
                }
            finally:
                response.close()
    raise TargetNotAllowed(f"more than {MAX_REDIRECTS} redirects from {url!r}")


@shared_task(
    name="forwarder.http",
    bind=True,
    autoretry_for=(httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.RemoteProtocolError),
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=3,
    throws=(TargetNotAllowed,),
)
def http(
    self: Task,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    json: Any = None,
    body: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Forward one HTTP request to an allow-listed target and return status, headers and a
    bounded body. Connection errors are retried with backoff; anything else fails the run."""
    settings = require_core(self.app).settings
    return forward_request(
        url,
        method=method,
        headers=headers,
        json=json,
        body=body,
        timeout=timeout,
        allow=settings.http_allow,
        max_body=settings.http_max_body_bytes,
    )
