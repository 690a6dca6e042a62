"""Files generated from or kept beside the chart stay current: CRD copy, values table, install
manifest, and the Dockerfile's promises (non-root, wheel install, safe path, small)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from support.chart import CHART, REPO


def load_script(name: str) -> ModuleType:
    """A script from scripts/ as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_chart_crds_are_identical_to_manifests_crds() -> None:
    source = REPO / "manifests" / "crds"
    chart_crds = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart_crds == sorted(p.name for p in source.glob("*.yaml"))
    assert chart_crds, "no CRD in charts/forwarder/crds"
    for name in chart_crds:
        assert (CHART / "crds" / name).read_bytes() == (source / name).read_bytes(), (
            f"charts/forwarder/crds/{name} differs from manifests/crds/{name}: copy it over"
        )


def test_values_table_in_readme_is_current() -> None:
    values_table = load_script("values_table")
    readme, wanted = values_table.current_readme()
    assert readme == wanted, "charts/forwarder/README.md values table is stale: `make manifests`"


def test_every_value_is_documented_and_in_the_schema() -> None:
    values_table = load_script("values_table")
    text = (CHART / "values.yaml").read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=values.schema.json"
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    rows = values_table.rows(text, schema)
    paths = {row.path for row in rows}
    assert {"worker.keda.listLength", "redis.external.url", "flower.auth.existingSecret"} <= paths
    assert all(row.description for row in rows)
    undocumented = text.replace("# -- Replaces the chart name", "# Replaces the chart name")
    with pytest.raises(values_table.ValuesDocError, match="nameOverride"):
        values_table.documented_keys(undocumented)
    unknown = text + "# -- Not in the schema.\nbogus: 1\n"
    with pytest.raises(values_table.ValuesDocError, match="bogus: not defined"):
        values_table.rows(unknown, schema)


def test_install_manifest_is_current_and_carries_no_credential() -> None:
    render_manifests = load_script("render_manifests")
    wanted = render_manifests.install_manifest()
    current = (REPO / "manifests" / "install" / "forwarder.yaml").read_text()
    assert current == wanted, "manifests/install/forwarder.yaml is stale: run `make manifests`"
    objects = [doc for doc in yaml.safe_load_all(current) if doc]
    kinds = [obj["kind"] for obj in objects]
    assert "Secret" not in kinds
    assert kinds[0] == "Namespace"
    assert "CustomResourceDefinition" in kinds
    assert not any("helm.sh/hook" in obj["metadata"].get("annotations", {}) for obj in objects)
    # The header says how to create each Secret the pods refer to.
    referenced = {
        m for m in re.findall(r"secretKeyRef:\s+name: (\S+)", current) if m.startswith("forwarder")
    }
    for name in referenced:
        assert f"create secret generic {name} " in current, name


DOCKERFILE = (REPO / "Dockerfile").read_text()


def final_stage() -> str:
    return re.split(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)[-1]


def test_dockerfile_is_multi_stage_and_final_stage_has_no_build_tools() -> None:
    assert len(re.findall(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)) >= 2
    final = final_stage()
    assert "COPY --from=build" in final
    for tool in ("gcc", "build-essential", "apt-get install", "pip install", "COPY worker"):
        assert tool not in final, tool


def test_dockerfile_installs_the_wheel_not_the_source() -> None:
    assert "pip wheel" in DOCKERFILE
    assert re.search(r"pip install /dist/forwarder-\*\.whl", DOCKERFILE)
    assert not re.search(r"pip install[^\n]*(-e|--editable)\b", DOCKERFILE)


def test_image_runs_as_the_charts_non_root_user_with_a_safe_path() -> None:
    final = final_stage()
    user = re.search(r"^USER (\d+):(\d+)$", final, flags=re.MULTILINE)
    assert user is not None
    assert user[1] != "0"
    values = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]
    assert (int(user[1]), int(user[2])) == (values["runAsUser"], values["runAsGroup"])
    assert "PYTHONSAFEPATH=1" in final
    workdir = re.findall(r"^WORKDIR (\S+)$", final, flags=re.MULTILINE)[-1]
    assert workdir not in {"/src", "/app"}
    assert "COPY . " not in DOCKERFILE


def test_dockerignore_keeps_the_context_to_the_packages() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "worker", "operator", "api"}
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, flags=re.MULTILINE):
        for path in copied.split():
            assert Path(path).name.rstrip("/") in allowed, path
