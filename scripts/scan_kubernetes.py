"""Scan every Kubernetes object Forwarder ships with checkov, offline; exit 1 on any finding.

What is scanned: the chart rendered by Helm's own engine (helm-python-sdk, through
tests/support/chart.py) with its defaults and with each CI scenario
(``charts/forwarder/ci/*-values.yaml``, which enable the optional objects), and ``manifests/``.
The files go to a scratch folder laid out as ``chart/<scenario>/forwarder/templates/...`` and
``manifests/...``, so each finding names its scenario and template.

checkov runs from its own virtualenv (``.venv-checkov``, made by ``make scan``) with the
repository's ``.checkov.yaml``. It makes no network call: no API key is passed, the platform's
policy metadata is not downloaded (``BC_SKIP_MAPPING``, ``skip-download``), and the check for a
newer checkov is off (``CKV_SKIP_PACKAGE_UPDATE_CHECK``).

    PYTHONPATH=tests python scripts/scan_kubernetes.py [--checkov PATH] [-- CHECKOV_ARGS...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python as helm
from support.chart import CHART, NAMESPACE, RELEASE, SCENARIOS, load_values

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / ".checkov.yaml"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
# The platform's credentials and address: never passed on, so checkov scans locally only.
PLATFORM_VARIABLES = ("BC_API_KEY", "PRISMA_API_URL", "BC_API_URL", "BC_REPO_ID")
OFFLINE = {"BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"}


def render_chart(into: Path) -> list[str]:
    """Write each scenario's rendered templates under ``into/<scenario>/``; returns the
    scenarios."""
    chart = helm.Chart.load(CHART)
    try:
        for scenario in SCENARIOS:
            manifests = chart.render(load_values(scenario), name=RELEASE, namespace=NAMESPACE)
            for path, text in manifests.items():
                if path.endswith("NOTES.txt"):
                    continue
                target = into / scenario / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
    finally:
        chart.close()
    return list(SCENARIOS)


def checkov_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PLATFORM_VARIABLES}
    return env | OFFLINE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkov", type=Path, default=CHECKOV, help="the checkov executable")
    parser.add_argument("checkov_args", nargs="*", help="more checkov options, after --")
    args = parser.parse_args(argv)
    if not args.checkov.exists():
        print(f"scan_kubernetes: {args.checkov} is missing; `make scan` installs it")
        return 2
    with tempfile.TemporaryDirectory(prefix="forwarder-scan-") as scratch:
        root = Path(scratch)
        scenarios = render_chart(root / "chart")
        shutil.copytree(REPO / "manifests", root / "manifests")
        what = f"the chart ({', '.join(scenarios)}) and manifests/"
        print(f"scan_kubernetes: {what} with checkov", flush=True)
        command = [str(args.checkov), "--config-file", str(CONFIG), "-d", ".", *args.checkov_args]
        return subprocess.run(command, cwd=root, env=checkov_environment(), check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
