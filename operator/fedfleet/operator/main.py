"""`python -m fedfleet.operator` (and `fedfleet operator`): run the FederatedJob operator with kopf.

The settings from the flags reach the handlers in kopf's operator memo (fedfleet.operator.handlers), not
through the process environment."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fedfleet.api import pod_environment
from fedfleet.operator.config import GatewayLink, OperatorConfig, prometheus_address

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    defaults = OperatorConfig()
    p = argparse.ArgumentParser(prog="fedfleet operator", description="Run the FederatedJob operator.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (the default)")
    p.add_argument("--kubeconfig", type=Path, help="outside a cluster: this kubeconfig (never implicit)")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port; 0 turns it off")
    p.add_argument("--health-port", type=int, default=8081, help="liveness /healthz port; 0 turns it off")
    pod_ip = os.environ.get(pod_environment.POD_IP) or os.environ.get(pod_environment.NODE_AGENT_POD_IP)
    p.add_argument("--bind", default=pod_ip or "0.0.0.0",
                   help=f"address of the metrics and health ports (default: ${pod_environment.POD_IP})")  # fmt: skip
    p.add_argument("--aggregator-image", default=defaults.aggregator_image)
    p.add_argument("--operator-image", default=defaults.operator_image, help="image of the aggregator's init step")
    p.add_argument("--state-storage", choices=("pvc", "emptyDir"), default=defaults.state_storage)
    p.add_argument("--state-size", default=defaults.state_size, help="size of each job's checkpoint claim")
    p.add_argument("--storage-class", default=None, help="storage class of the checkpoint claims")
    p.add_argument("--endpoint-mode", choices=("pod", "service"), default=defaults.endpoint_mode)
    p.add_argument("--resync-seconds", type=float, default=defaults.resync_seconds)
    p.add_argument("--prometheus-address", help="Prometheus HTTP API base URL for rollout analysis (default: none)")
    p.add_argument("--fleet-namespace", default=defaults.fleet_namespace,
                   help="namespace of the fleet gateway: fleets' views and signing keys live there")  # fmt: skip
    p.add_argument("--gateway-http-address", default=None,
                   help="the fleet gateway's HTTP base URL (artifacts a ModelRollout names by digest)")  # fmt: skip
    p.add_argument("--rollout-seconds", type=float, default=defaults.rollout_seconds,
                   help="seconds between reconciliations of each ModelRollout")  # fmt: skip
    p.add_argument(
        "--gateway-address",
        metavar="HOST:PORT",
        help="the fleet gateway aggregators publish final models to (default: none, no publishing)",
    )
    p.add_argument("--gateway-ca", type=Path, help="PEM certificate of the gateway's CA (with --gateway-address)")
    p.add_argument("--gateway-admin-token", type=Path,
                   help="the gateway's FleetAdmin secret, a hex file (with --gateway-address)")  # fmt: skip
    p.add_argument("--gateway-publish-token", type=Path,
                   help="the gateway's publish-only secret, a hex file, copied into each job for its aggregator "
                        "(with --gateway-address)")  # fmt: skip
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def gateway_link(args: argparse.Namespace) -> GatewayLink | None:
    """The gateway from the four flags, all or none; ValueError naming the flag."""
    flags = ("--gateway-address", "--gateway-ca", "--gateway-admin-token", "--gateway-publish-token")
    values = (args.gateway_address, args.gateway_ca, args.gateway_admin_token, args.gateway_publish_token)
    if all(value is None for value in values):
        return None
    missing = [flag for flag, value in zip(flags, values, strict=True) if value is None]
    if missing:
        raise ValueError(f"{missing[0]}: needed with {', '.join(f for f in flags if f not in missing)}")
    return GatewayLink.load(
        args.gateway_address, args.gateway_ca, args.gateway_admin_token, args.gateway_publish_token, flags
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value in (("--resync-seconds", args.resync_seconds), ("--rollout-seconds", args.rollout_seconds)):
        if not value > 0:
            parser.error(f"{flag} must be greater than 0")
    for port in (args.metrics_port, args.health_port):
        if not 0 <= port <= 65535:
            parser.error(f"port {port} is outside 0..65535")
    try:
        prometheus = (
            prometheus_address(args.prometheus_address, "--prometheus-address") if args.prometheus_address else None
        )
        gateway = gateway_link(args)
    except ValueError as err:
        parser.error(str(err))
    config = OperatorConfig(
        aggregator_image=args.aggregator_image,
        operator_image=args.operator_image,
        state_storage=args.state_storage,
        state_size=args.state_size,
        storage_class=args.storage_class,
        endpoint_mode=args.endpoint_mode,
        resync_seconds=args.resync_seconds,
        namespaces=tuple(args.namespace),
        kubeconfig=args.kubeconfig,
        prometheus_address=prometheus,
        fleet_namespace=args.fleet_namespace,
        gateway_http_address=args.gateway_http_address,
        rollout_seconds=args.rollout_seconds,
        gateway=gateway,
    )
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    import kopf
    from prometheus_client import CollectorRegistry, start_http_server

    from fedfleet.operator import handlers  # registers the handlers
    from fedfleet.operator.kube_credentials import CredentialsError, load
    from fedfleet.operator.metrics import OperatorMetrics

    try:
        credentials = load(config.kubeconfig)  # fail fast, with one line, when the API server is out of reach
    except CredentialsError as exc:
        print(f"fedfleet operator: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.bind, registry=registry)
    liveness = f"http://{args.bind}:{args.health_port}/healthz" if args.health_port else None
    kopf.run(
        standalone=True,  # one replica (Deployment strategy Recreate): no peering objects needed
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=liveness,
        memo=handlers.operator_memo(config, metrics, credentials),
    )
    return 0
