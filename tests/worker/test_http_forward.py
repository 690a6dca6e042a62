"""forwarder.http: the allow-list is checked before any connection, bodies are bounded, and
redirects are re-checked. A real HTTP server on 127.0.0.1 counts the connections it gets."""

from __future__ import annotations

import http.server
import ipaddress
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from forwarder_worker.tasks.http import AllowRule, TargetNotAllowed, check_target, forward_request


@dataclass
class Server:
    port: int
    hits: list[str] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(port=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits.append(self.path)
            if self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", self.path.split("to=", 1)[1])
                self.end_headers()
                return
            body = b"y" * 5000 if self.path == "/big" else b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_an_empty_allow_list_refuses_before_connecting(server: Server) -> None:
    with pytest.raises(TargetNotAllowed, match="not in FORWARDER_HTTP_ALLOW"):
        forward_request(f"http://127.0.0.1:{server.port}/", allow=[])
    assert server.hits == []


def test_an_allowed_target_is_forwarded(server: Server) -> None:
    result = forward_request(
        f"http://127.0.0.1:{server.port}/x?q=1", allow=[f"127.0.0.1:{server.port}"]
    )
    assert result["status"] == 200
    assert result["body"] == '{"ok": true}'
    assert result["truncated"] is False
    assert server.hits == ["/x?q=1"]


def test_the_port_in_an_entry_is_enforced(server: Server) -> None:
    with pytest.raises(TargetNotAllowed):
        forward_request(f"http://127.0.0.1:{server.port}/", allow=["127.0.0.1:1"])
    assert server.hits == []


def test_the_body_is_bounded(server: Server) -> None:
    result = forward_request(
        f"http://127.0.0.1:{server.port}/big", allow=["127.0.0.0/8"], max_body=100
    )
    assert len(result["body"]) == 100
    assert result["truncated"] is True


def test_a_redirect_to_a_disallowed_host_is_refused(server: Server) -> None:
    url = f"http://127.0.0.1:{server.port}/redirect?to=http://169.254.169.254/latest/meta-data"
    with pytest.raises(TargetNotAllowed, match="169.254.169.254"):
        forward_request(url, allow=[f"127.0.0.1:{server.port}"])
    assert server.hits == ["/redirect?to=http://169.254.169.254/latest/meta-data"]


def test_an_allowed_redirect_is_followed(server: Server) -> None:
    target = f"http://127.0.0.1:{server.port}/final"
    result = forward_request(
        f"http://127.0.0.1:{server.port}/redirect?to={target}", allow=[f"127.0.0.1:{server.port}"]
    )
    assert result["status"] == 200
    assert result["url"] == target


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://169.254.169.254/latest/meta-data", []),
        ("http://169.254.169.254/", ["10.0.0.0/8"]),
        ("http://10.96.0.1/", []),
        ("http://localhost/", []),
        ("http://localhost/", ["localhost"]),  # a name entry never allows loopback
        ("http://127.0.0.1/", ["*.example.com"]),
        ("ftp://127.0.0.1/", ["127.0.0.1"]),
        ("http:///nohost", ["127.0.0.1"]),
    ],
)
def test_refused_targets(url: str, allow: list[str]) -> None:
    with pytest.raises(TargetNotAllowed):
        check_target(url, allow)


def test_a_cidr_entry_allows_addresses_inside_it() -> None:
    assert check_target("http://10.1.2.3:8080/x", ["10.0.0.0/8"])[1].exploded == "10.1.2.3"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("api.example.com", AllowRule(host="api.example.com")),
        ("*.example.com", AllowRule(host=".example.com")),
        (
            "127.0.0.1:7500",
            AllowRule(network=ipaddress.ip_network("127.0.0.1/32"), port=7500),
        ),
        ("[::1]:8080", AllowRule(network=ipaddress.ip_network("::1/128"), port=8080)),
    ],
)
def test_allow_rules_parse(text: str, rule: AllowRule) -> None:
    assert AllowRule.parse(text) == rule


def test_a_bad_allow_entry_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="is not a host"):
        AllowRule.parse("http://nope")
