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

import pytest
from forwarder_worker import Core, Settings
from support.components import check_every_component, forwarder
from support.processes import forwarder_env
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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_component_works_over_tls_with_a_client_certificate(
    server: RedisNode, tls: TlsFiles, tmp_path: Path, logs: Path
) -> None:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "encrypted.yaml").write_text(SCHEDULE)
    env = _tls_env(server, tls, tls.ca, FLOWER_BASIC_AUTH="admin:pw")
    core = Core.from_settings(
        Settings(
            redis_url=f"rediss://127.0.0.1:{server.port}/0",
            redis_tls_ca_file=tls.ca,
            redis_tls_cert_file=tls.client_cert,
            redis_tls_key_file=tls.client_key,
        )
    )
    check_every_component(env, core, folder, logs, schedule="default/encrypted", worker="tls")
    core.close()


@pytest.mark.slow
@pytest.mark.parametrize("component", ["worker", "beat", "flower", "api"])
def test_a_wrong_ca_stops_each_component_with_one_line(
    server: RedisNode, tls: TlsFiles, component: str
) -> None:
    env = _tls_env(server, tls, tls.other_ca, FLOWER_BASIC_AUTH="admin:pw")
    done = subprocess.run(forwarder(component), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"forwarder {component}: Redis at rediss://127.0.0.1:")
    assert "CERTIFICATE_VERIFY_FAILED" in lines[0]
    assert "FORWARDER_REDIS_TLS_CA_FILE" in lines[0]
