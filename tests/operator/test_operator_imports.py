"""The operator and the api do not load the ``kubernetes`` client package: it imports the
generated models of the whole Kubernetes API (about 20 MiB of each process, with requests
and oauthlib), and kopf imports it whenever it is installed, so no dependency of ours may
bring it. Their Kubernetes calls go through lightkube (``forwarder_operator.kube``,
``forwarder_api.kube_schedules``), and kopf logs in by itself (``handlers.login``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
import {module}
print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}})))
"""


@pytest.mark.parametrize("module", ["forwarder_operator.main", "forwarder_api.main"])
def test_the_kubernetes_package_is_never_loaded(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    loaded = set(json.loads(out))
    assert "lightkube" in loaded  # what replaced it, so the check ran on the real imports
    assert not loaded & {"kubernetes", "kubernetes_asyncio", "oauthlib"}
