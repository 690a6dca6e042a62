"""``forwarder.http`` refuses disallowed targets before connecting, through a real worker run.

Two local HTTP servers stand in for the targets: a "canary" on 127.0.0.1 that must never get
a connection, and a "redirector" that the allow-list names explicitly and that answers with a
redirect to a disallowed place. Every refused run must end FAILURE with TargetNotAllowed in
its run record, without retries, and the canary must have seen nothing.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from forwarder_worker import Core
from forwarder_worker.runs.records import RunLog, RunRecord
from forwarder_worker.settings import Settings
from support.processes import Proc, celery_worker, eventually, forwarder_env, running


class _Server:
    """A local HTTP server that counts connections and requests, and answers with a fixed status/location."""

    def __init__(self, status: int = 200, location: str = "") -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def verify_request(self, request: object, client_address: object) -> bool:
                outer.connections += 1  # every accepted TCP connection, request or not
                return True

        self.connections = 0
        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def canary() -> Iterator[_Server]:
    server = _Server()
    yield server
    server.close()


@pytest.fixture
def redirector(canary: _Server) -> Iterator[_Server]:
    server = _Server(302, f"http://127.0.0.1:{canary.port}/stolen")
    yield server
    server.close()


@pytest.fixture
def metadata_redirector() -> Iterator[_Server]:
    server = _Server(307, "http://169.254.169.254/latest/meta-data/")
    yield server
    server.close()


@pytest.fixture
def allowed() -> Iterator[_Server]:
    server = _Server()
    yield server
    server.close()


@pytest.fixture
def worker(
    redis_url: str,
    logs: Path,
    canary: _Server,
    redirector: _Server,
    metadata_redirector: _Server,
    allowed: _Server,
) -> Iterator[Proc]:
    # The allow-list names the two redirectors by IP:port, and "localhost" by name on the
    # canary's port (a host entry is trusted only for non-special addresses), plus an
    # ordinary public suffix. Nothing else is allowed.
    allow = ",".join(
        [
            f"127.0.0.1:{redirector.port}",
            f"127.0.0.1:{metadata_redirector.port}",
            f"127.0.0.1:{allowed.port}",
            f"localhost:{canary.port}",
            "*.example.com",
        ]
    )
    env = forwarder_env(redis_url, FORWARDER_HTTP_ALLOW=allow)
    proc = celery_worker(env, logs / "worker.log", concurrency=2)
    with running(proc):
        eventually(lambda: " ready." in proc.output(), 90, message="worker ready")
        yield proc


def _run(redis_url: str, runs: RunLog, url: str) -> RunRecord:
    app = Core.from_settings(Settings(redis_url=redis_url)).app
    run_id = str(uuid.uuid4())
    runs.queued(run_id, "forwarder.http", source="api", kwargs={"url": url})
    app.send_task("forwarder.http", kwargs={"url": url, "timeout": 5}, task_id=run_id)
    record: RunRecord = eventually(
        lambda: (r := runs.get(run_id)) is not None and r.final and r,
        60,
        message=f"a final state for {url}",
    )
    return record


def test_disallowed_targets_fail_before_connecting(
    worker: Proc,
    redis_url: str,
    core: Core,
    canary: _Server,
    redirector: _Server,
    metadata_redirector: _Server,
    allowed: _Server,
) -> None:
    runs = core.runs
    # The worker can connect: an allowed target answers (so the refusals below are refusals).
    ok = _run(redis_url, runs, f"http://127.0.0.1:{allowed.port}/hello")
    assert ok.state == "SUCCESS", ok
    assert '"status": 200' in (ok.result or ""), ok.result
    assert allowed.requests == ["/hello"]
    refused = {
        # A Kubernetes service-range address and a pod-range one.
        "http://10.96.0.1/api": "not in FORWARDER_HTTP_ALLOW",
        "http://10.244.1.7:8080/": "not in FORWARDER_HTTP_ALLOW",
        # The cloud metadata service.
        "http://169.254.169.254/latest/meta-data/": "not in FORWARDER_HTTP_ALLOW",
        # Loopback by IP, and by names that resolve to it (from /etc/hosts).
        f"http://127.0.0.1:{canary.port}/": "not in FORWARDER_HTTP_ALLOW",
        f"http://[::1]:{canary.port}/": "not in FORWARDER_HTTP_ALLOW",
        f"http://localhost.:{canary.port}/x": "special address",
        # Named in the allow-list, but resolves to loopback: still refused.
        f"http://localhost:{canary.port}/": "special address",
        # Allowed hop that redirects to a disallowed one.
        f"http://127.0.0.1:{redirector.port}/start": "not in FORWARDER_HTTP_ALLOW",
        f"http://127.0.0.1:{metadata_redirector.port}/start": "not in FORWARDER_HTTP_ALLOW",
        # Not http at all.
        "file:///etc/passwd": "not an http(s) URL",
    }
    for url, why in refused.items():
        record = _run(redis_url, runs, url)
        assert record.state == "FAILURE", (url, record)
        assert record.error_type == "TargetNotAllowed", (url, record)
        assert why in (record.error or ""), (url, record.error)
        assert record.retries == 0, f"{url} was retried"
    # The canary never saw a request; each redirector saw exactly its one request.
    assert canary.connections == 0 and canary.requests == []
    assert redirector.requests == ["/start"]
    assert metadata_redirector.requests == ["/start"]
