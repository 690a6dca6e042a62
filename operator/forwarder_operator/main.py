"""``forwarder operator``: run the kopf operator with Forwarder's settings and flags.

``kopf run -m forwarder_operator --all-namespaces`` works too; this entry point adds the
namespaces, peering and liveness from ``FORWARDER_OPERATOR_*`` settings so a deployment
configures every component the same way, and checks that the peering object it is told to
use exists.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence

import kopf

import forwarder_operator.handlers  # noqa: F401  (registers the handlers)
from forwarder_operator.kube import KubeClient
from forwarder_operator.settings import OperatorSettings

NAMESPACE_PATTERN = re.compile(r"[*?\[!]")
"""kopf's namespace globs and exclusions: no single peering object to look for."""


class PeeringMissing(RuntimeError):
    """The peering object ``--peering`` names does not exist."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``forwarder operator``."""
    parser = argparse.ArgumentParser(
        prog="forwarder operator",
        description="Reconcile ScheduledTask resources into Forwarder schedules.",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=None,
        help="watch this namespace (repeatable); default: FORWARDER_OPERATOR_NAMESPACES or all",
    )
    parser.add_argument(
        "--liveness",
        default=None,
        help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument("--peering", default=None, help="kopf peering name (default standalone)")
    parser.add_argument("--priority", type=int, default=None, help="peering priority")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="log handler details")
    loudness.add_argument("--debug", action="store_true", help="log everything (as -v)")
    loudness.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser.parse_args(argv)


def check_peering(config: OperatorSettings) -> None:
    """Raise PeeringMissing if the peering object the operator is told to use is absent.

    kopf never creates it, and an operator whose peering object does not exist pauses for
    good: it handles nothing and logs nothing above debug level. That is a ClusterKopfPeering
    when watching every namespace, else a KopfPeering in each watched namespace. Any answer
    but 404 passes: an API server not reachable yet is kopf's to wait for and report.
    """
    name = config.operator_peering
    if name is None:
        return
    kube = KubeClient()
    try:
        if not config.operator_namespaces:
            if kube.peering_missing(name, None):
                raise PeeringMissing(f"ClusterKopfPeering {name!r} does not exist")
            return
        for namespace in config.operator_namespaces:
            if NAMESPACE_PATTERN.search(namespace):
                continue
            if kube.peering_missing(name, namespace):
                raise PeeringMissing(
                    f"KopfPeering {name!r} does not exist in namespace {namespace}"
                )
    finally:
        kube.close()


def run(argv: Sequence[str] | None = None) -> int:
    """Run the operator until SIGINT/SIGTERM; returns the exit status."""
    args = parse_args(argv)
    config = OperatorSettings()
    overrides: dict[str, object] = {}
    if args.namespace:
        overrides["operator_namespaces"] = args.namespace
    if args.liveness:
        overrides["operator_liveness"] = args.liveness
    if args.peering:
        overrides["operator_peering"] = args.peering
    if args.priority is not None:
        overrides["operator_priority"] = args.priority
    config = config.model_copy(update=overrides)
    try:
        check_peering(config)
    except PeeringMissing as exc:
        print(
            f"forwarder operator: --peering: {exc}, and kopf would wait for it, handling "
            "nothing; create it (apiVersion kopf.dev/v1, no spec; the CRDs are in "
            "manifests/crds) or run without peering",
            file=sys.stderr,
        )
        return 2
    kopf.configure(verbose=args.verbose or args.debug, quiet=args.quiet, log_prefix=True)
    # httpx2 logs every request of the status loop at INFO.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=not config.operator_namespaces,
        namespaces=config.operator_namespaces,
        standalone=config.operator_peering is None,
        peering_name=config.operator_peering,
        priority=config.operator_priority,
        liveness_endpoint=config.operator_liveness,
        memo=kopf.Memo(config=config),
    )
    return 0
