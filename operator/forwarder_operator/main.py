"""``forwarder operator``: run the kopf operator with Forwarder's settings and flags.

``kopf run -m forwarder_operator --all-namespaces`` works too; this entry point adds the
namespaces, peering and liveness from ``FORWARDER_OPERATOR_*`` settings so a deployment
configures every component the same way.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import kopf

import forwarder_operator.handlers  # noqa: F401  (registers the handlers)
from forwarder_operator.settings import OperatorSettings


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
    kopf.configure(verbose=args.verbose or args.debug, quiet=args.quiet, log_prefix=True)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
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
