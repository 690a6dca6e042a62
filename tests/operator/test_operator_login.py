"""The operator's credentials from a kubeconfig whose user runs an exec plugin (what EKS and
GKE kubeconfigs hold): kopf's own kubeconfig login reads only the file, so the operator's
login handler runs the plugin, as kubectl and lightkube (its own client) do."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from forwarder_operator.kube import ExecPluginError, KubeClient, exec_credential
from support.operator_process import operator_in_thread
from support.processes import eventually

pytestmark = pytest.mark.cluster

HOURLY = {"task": "forwarder.ping", "schedule": {"every": "1h"}}


def exec_kubeconfig(source: Path, path: Path, script: str) -> Path:
    """``source``'s cluster, with a user whose exec plugin runs the Python ``script``."""
    config = yaml.safe_load(source.read_text())
    config["users"] = [
        {
            "name": "plugin",
            "user": {
                "exec": {
                    # v1beta1, what EKS's and GKE's plugins write (lightkube 1.0 runs
                    # v1alpha1 and v1beta1 plugins only; the operator's login, any).
                    "apiVersion": "client.authentication.k8s.io/v1beta1",
                    "command": sys.executable,
                    "args": ["-c", script],
                }
            },
        }
    ]
    for context in config["contexts"]:
        context["context"]["user"] = "plugin"
    path.write_text(yaml.safe_dump(config))
    return path


def printing(credential: dict[str, Any]) -> str:
    """A plugin script that prints ``credential`` as an ExecCredential; where it is told
    whether it is interactive (kubectl and the operator's login tell it), it checks it is not."""
    document = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "status": credential,
    }
    return (
        "import json, os\n"
        "info = json.loads(os.environ.get('KUBERNETES_EXEC_INFO', 'null'))\n"
        "assert info is None or info['spec']['interactive'] is False, info\n"
        f"print(json.dumps({document!r}))\n"
    )


def test_an_exec_plugin_user_runs_the_operator(
    kube: Any,
    namespace: str,
    operator_env: dict[str, str],
    operator_kubeconfig: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (user,) = yaml.safe_load(operator_kubeconfig.read_text())["users"]
    token = user["user"]["token"]
    kubeconfig = exec_kubeconfig(
        operator_kubeconfig,
        tmp_path / "kubeconfig",
        printing({"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"}),
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    fields = exec_credential()
    assert fields is not None and fields["token"] == token
    assert fields["expiration"].year == 2099

    # kopf's watch and patches, and the operator's own client (the sweep), as that user.
    with operator_in_thread({**operator_env, "KUBECONFIG": str(kubeconfig)}):
        kube.create("plugged", HOURLY)
        eventually(lambda: kube.ready("plugged").get("status") == "True", 30)
    client = KubeClient([namespace])
    try:
        assert [t.metadata.name for t in client.list_scheduled_tasks()] == ["plugged"]
    finally:
        client.close()


def test_a_failing_exec_plugin_is_named(
    operator_kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = "import sys; sys.stderr.write('token expired, run: aws sso login'); sys.exit(3)"
    kubeconfig = exec_kubeconfig(operator_kubeconfig, tmp_path / "kubeconfig", script)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(ExecPluginError, match="failed \\(3\\): token expired, run: aws sso"):
        exec_credential()

    nothing = exec_kubeconfig(operator_kubeconfig, tmp_path / "nothing", printing({}))
    monkeypatch.setenv("KUBECONFIG", str(nothing))
    with pytest.raises(ExecPluginError, match="gave no credential"):
        exec_credential()

    garbled = exec_kubeconfig(operator_kubeconfig, tmp_path / "garbled", "print('[1, 2]')")
    monkeypatch.setenv("KUBECONFIG", str(garbled))
    with pytest.raises(ExecPluginError, match="exec plugin"):
        exec_credential()


def test_a_plain_kubeconfig_needs_no_plugin(
    operator_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig))
    assert exec_credential() is None
