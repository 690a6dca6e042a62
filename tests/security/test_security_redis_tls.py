"""Redis over TLS (``rediss://``), against a real ``redis-server`` with certificates the test
makes: a CA, the server's certificate for 127.0.0.1, and a client certificate the server
requires (``tls-auth-clients yes``).

With the CA and the client pair (``FORWARDER_REDIS_TLS_CA_FILE``, ``_CERT_FILE``,
``_KEY_FILE``), every component works: ``forwarder worker``, ``beat``, ``flower`` and ``api``,
the folder source and ``forwarder status``; a schedule fires end to end (broker, result
backend, store and run log all over TLS), Flower sees the worker, the API is ready and lists
the runs. With a CA that did not sign the server's certificate, each ``forwarder`` component
exits at once with status 2 and one line naming the setting, instead of retrying forever.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from forwarder_worker import Core, Settings
from support.processes import BIN, eventually, forwarder_env, free_port, running, start
from support.redis_ha import RedisNode, redis_binaries_missing, started, tls_server
from support.tls_certs import TlsFiles, make_tls_files

pytestmark = pytest.mark.skipif(redis_binaries_missing() is not None, reason="make tools")

SCHEDULE = """\
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata:
  name: encrypted
spec:
  task: forwarder.ping
  schedule:
    every: 1s
"""


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "certs")


@pytest.fixture
def server(tmp_path: Path, tls: TlsFiles) -> Iterator[RedisNode]:
    with started(tls_server(tmp_path / "redis", tls, auth_clients=True)) as node:
        yield node


def _tls_env(server: RedisNode, tls: TlsFiles, ca: Path, **extra: str) -> dict[str, str]:
    return forwarder_env(
        f"rediss://127.0.0.1:{server.port}/0",
        FORWARDER_REDIS_TLS_CA_FILE=str(ca),
        FORWARDER_REDIS_TLS_CERT_FILE=str(tls.client_cert),
        FORWARDER_REDIS_TLS_KEY_FILE=str(tls.client_key),
        **extra,
    )


def _forwarder(*args: str) -> list[str]:
    return [str(BIN / "forwarder"), *args]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_component_works_over_tls_with_a_client_certificate(
    server: RedisNode, tls: TlsFiles, tmp_path: Path, logs: Path
) -> None:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "encrypted.yaml").write_text(SCHEDULE)
    env = _tls_env(server, tls, tls.ca, FLOWER_BASIC_AUTH="admin:pw")
    flower_port, api_port = free_port(), free_port()
    worker = start(
        _forwarder(
            "worker", "--concurrency=1", "--without-gossip", "--without-mingle", "-n", "tls@%h"
        ),
        env,
        logs / "worker.log",
        "worker",
    )
    beat = start(_forwarder("beat"), env, logs / "beat.log", "beat")
    source = start(
        [str(BIN / "python"), "-m", "forwarder_operator.folder", "--dir", str(folder)],
        env,
        logs / "folder.log",
        "folder",
    )
    flower = start(
        _forwarder("flower", "--address=127.0.0.1", f"--port={flower_port}"),
        env,
        logs / "flower.log",
        "flower",
    )
    api = start(
        _forwarder("api", "--host", "127.0.0.1", "--port", str(api_port)),
        {**env, "FORWARDER_API_TOKENS": "t0ken-for-tests", "FORWARDER_SCHEDULES_DIR": str(folder)},
        logs / "api.log",
        "api",
    )
    core = Core.from_settings(
        Settings(
            redis_url=f"rediss://127.0.0.1:{server.port}/0",
            redis_tls_ca_file=tls.ca,
            redis_tls_cert_file=tls.client_cert,
            redis_tls_key_file=tls.client_key,
        )
    )
    with running(worker, beat, source, flower, api):
        runs = core.runs
        eventually(lambda: runs.summary("default/encrypted").succeeded >= 2, 120, message="runs")
        status = subprocess.run(
            _forwarder("status"), env=env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert "default/encrypted" in status.stdout

        def flower_sees_worker() -> bool:
            try:
                reply = httpx.get(
                    f"http://127.0.0.1:{flower_port}/api/workers?refresh=1",
                    auth=("admin", "pw"),
                    timeout=10,
                )
            except httpx.HTTPError:
                return False
            return reply.status_code == 200 and any(n.startswith("tls@") for n in reply.json())

        eventually(flower_sees_worker, 90, 1.0, message="Flower seeing the worker")

        def api_ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=5).is_success
            except httpx.HTTPError:
                return False

        eventually(api_ready, 90, 0.5, message="the API ready (it reaches Redis)")
        headers = {"Authorization": "Bearer t0ken-for-tests"}
        submitted = httpx.post(
            f"http://127.0.0.1:{api_port}/tasks/forwarder.ping/runs",
            json={},
            headers=headers,
            timeout=10,
        )
        assert submitted.status_code == 202, submitted.text
        run_id = submitted.json()["id"]
        eventually(
            lambda: (record := runs.get(run_id)) is not None and record.state == "SUCCESS",
            60,
            0.2,
            message="a run submitted through the API",
        )
    core.close()


@pytest.mark.slow
@pytest.mark.parametrize("component", ["worker", "beat", "flower", "api"])
def test_a_wrong_ca_stops_each_component_with_one_line(
    server: RedisNode, tls: TlsFiles, component: str
) -> None:
    env = _tls_env(server, tls, tls.other_ca, FLOWER_BASIC_AUTH="admin:pw")
    done = subprocess.run(
        _forwarder(component), env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"forwarder {component}: Redis at rediss://127.0.0.1:")
    assert "CERTIFICATE_VERIFY_FAILED" in lines[0]
    assert "FORWARDER_REDIS_TLS_CA_FILE" in lines[0]
