"""`kubectl fedfleet`: watch and steer ModelRollouts (kubectl finds `kubectl-fedfleet` on PATH).

    kubectl fedfleet status NAME [-w]          step, weight, versions, devices per version, analysis
    kubectl fedfleet promote NAME [--full]     next step now (--full: straight to 100 %)
    kubectl fedfleet abort|pause|resume|retry NAME

Actions are annotations (fedfleet.api.rollout_actions), never edits of `spec`, so what Git holds stays what
the cluster holds. The plugin talks to the API server with the official Kubernetes client and the
kubeconfig kubectl passes on (`--kubeconfig`, else $KUBECONFIG, else the client's default).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from fedfleet.api.federatedjob import API_GROUP
from fedfleet.api.rollout_actions import ACTION_ANNOTATION, Action, new_request

VERSION = "v1alpha1"
PLURAL = "modelrollouts"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Obj = Mapping[str, Any]


def short(digest: object) -> str:
    """sha256:1f2e3d4c… → 1f2e3d4c (what the printer columns show too)."""
    if not isinstance(digest, str) or not digest:
        return "-"
    return digest.removeprefix("sha256:")[:12]


def render_status(rollout: Obj) -> str:
    """The rollout as a few lines of text: what `status` prints and `status -w` redraws."""
    meta, spec, status = rollout.get("metadata", {}), rollout.get("spec", {}), rollout.get("status") or {}
    steps = spec.get("steps") or []
    lines = [
        f"Name:      {meta.get('namespace', '')}/{meta.get('name', '')}",
        f"Phase:     {status.get('phase', 'Pending')}" + (f" ({status['reason']})" if status.get("reason") else ""),
        f"Step:      {min(int(status.get('stepIndex', 0)), len(steps))}/{len(steps)}",
        f"Weight:    {status.get('weight', 0)}%",
        f"Stable:    {short(status.get('stable'))}",
        f"Canary:    {short(status.get('candidate'))}",
        f"Revision:  {status.get('revision', 0)}",
    ]
    if status.get("message"):
        lines.append(f"Message:   {status['message']}")
    devices = status.get("devices") or []
    if devices:
        lines.append("Devices:")
        for row in devices:
            lines.append(f"  {short(row.get('version')):<14}{row.get('role', ''):<9}{row.get('count', 0)}")
    runs = status.get("analysis") or []
    if runs:
        lines.append("Analysis:")
        for run in runs:
            where = "background" if int(run.get("step", -1)) < 0 else f"step {run.get('step')}"
            last = (run.get("measurements") or [{}])[-1]
            value = last.get("value")
            shown = "-" if value is None else f"{value:.4g}"
            lines.append(f"  {run.get('metric', '?'):<20}{where:<12}{run.get('phase', ''):<14}last={shown}")
    return "\n".join(lines)


class Cluster:
    """The few API calls the plugin makes, on the official client."""

    def __init__(self, kubeconfig: str | None) -> None:
        from kubernetes import client, config

        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]  # untyped upstream
        self._api = client.CustomObjectsApi()

    def get(self, namespace: str, name: str) -> Obj:
        return cast(Obj, self._api.get_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURAL, name))

    def annotate(self, namespace: str, name: str, key: str, value: str) -> None:
        body = {"metadata": {"annotations": {key: value}}}
        self._api.patch_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURAL, name, body)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl fedfleet", description="steer fedfleet ModelRollouts")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG)")
    parser.add_argument("-n", "--namespace", default="default")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="show a rollout: step, weight, versions, devices, analysis")
    status.add_argument("name")
    status.add_argument("-w", "--watch", action="store_true", help="redraw every second until interrupted")
    promote = sub.add_parser("promote", help="go to the next step now")
    promote.add_argument("name")
    promote.add_argument("--full", action="store_true", help="skip every remaining step: 100 %% now")
    for action, text in (
        ("abort", "weight 0: every device back on the stable version"),
        ("pause", "stop stepping (a failing background analysis still aborts)"),
        ("resume", "continue after pause"),
        ("retry", "after an abort: the same model again from step 0"),
    ):
        sub.add_parser(action, help=text).add_argument("name")
    return parser


def run(args: argparse.Namespace, cluster: Cluster, out: Callable[[str], None], watch_rounds: int | None = None) -> int:
    if args.command == "status":
        shown = 0
        while True:
            out(render_status(cluster.get(args.namespace, args.name)))
            shown += 1
            if not args.watch or (watch_rounds is not None and shown >= watch_rounds):
                return EXIT_OK
            time.sleep(1.0)
            out("")
    action = {
        "promote": Action.PROMOTE_FULL if getattr(args, "full", False) else Action.PROMOTE,
        "abort": Action.ABORT,
        "pause": Action.PAUSE,
        "resume": Action.RESUME,
        "retry": Action.RETRY,
    }[args.command]
    request = new_request(action)
    cluster.annotate(args.namespace, args.name, ACTION_ANNOTATION, request.annotation_value())
    out(f"modelrollout.{API_GROUP}/{args.name}: {action} requested ({request.request_id[:8]})")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        print("kubectl fedfleet: the Kubernetes client is missing; install fedfleet[operator]", file=sys.stderr)
        return EXIT_FAILED
    try:
        return run(args, Cluster(args.kubeconfig), print)
    except ConfigException as exc:
        print(f"kubectl fedfleet: no usable kubeconfig: {exc}", file=sys.stderr)
    except ApiException as exc:
        print(f"kubectl fedfleet: {args.namespace}/{args.name}: {exc.status} {exc.reason}", file=sys.stderr)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
