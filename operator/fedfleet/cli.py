"""The `fedfleet` command.

Exit status: 0 success, 1 the job failed while running, 2 bad input (manifest, arguments, existing run),
3 stopped before the end (the state dir resumes it). For `fedfleet rollout`: 0 Healthy, 1 aborted
(Degraded), 2 bad input, 3 stuck (still paused or progressing after --max-minutes of simulated time).
Bad input is reported as one line naming the field and the rule, never as a traceback.

`fedfleet aggregator` exits 0 when its job is complete, 2 when its configuration, job or state dir can never
work (found before it serves anyone; with --termination-message the reason is also written to that file),
1 when something else went wrong (restarted, it resumes from its checkpoint), 3 when stopped before the end.

`fedfleet device-sim` exits 0 when every device heard the job is done; 2 when the aggregator refused devices
for good (their tokens: --token-key or --job is not the aggregator's); 1 when devices gave up on an
aggregator that answered nothing for --give-up-after, or failed otherwise; 130 when interrupted. It prints
one line per way devices ended, with the first device's story. A slow aggregator is none of these: calls
that run out of time are tried again.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedfleet.api.federatedjob import FederatedJob
    from fedfleet.runtime.job_run import JobRun
    from fedfleet.sim.network_fleet import FleetReport

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"must be in 0..{2**31 - 1}, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedfleet", description="Kubernetes-native federated learning for edge fleets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a FederatedJob manifest locally with a simulated fleet")
    run.add_argument("manifest", type=Path, help="FederatedJob YAML file")
    run.add_argument("--out", type=Path, help="run directory (default: runs/<job name>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--transport",
        choices=("grpc", "inprocess"),
        help="grpc (the default): an aggregator on loopback and the fleet over gRPC with TLS, the production "
        "path, and the one that runs secure aggregation; inprocess: the embedded runtime in simulated time, "
        "bit-reproducible",
    )
    run.add_argument("--time-scale", type=_positive, help="grpc: wall seconds per simulated second (default: 0.02)")
    run.set_defaults(handler=_cmd_run)

    rollout = sub.add_parser(
        "rollout",
        help="run a ModelRollout manifest locally: gateway, controller and a simulated fleet in simulated time",
    )
    rollout.add_argument("manifest", type=Path, help="ModelRollout YAML file (builtin metrics)")
    rollout.add_argument(
        "--model", type=Path, required=True, help="the candidate: a model.pt of `fedfleet run` (stands for spec.model)"
    )
    rollout.add_argument(
        "--stable", type=Path, help="the model the fleet runs before (default: the candidate's round-0 weights)"
    )
    rollout.add_argument("--out", type=Path, default=Path("runs/rollout"), help="default: runs/rollout")
    rollout.add_argument("--devices", type=_count, default=500, help="simulated devices (default: 500)")
    rollout.add_argument("--seed", type=_seed, default=0, help="the fleet's attributes, offline windows and cohorts")
    rollout.add_argument(
        "--max-minutes",
        type=_positive,
        default=30.0,
        help="simulated minutes after which a rollout still going counts as stuck (default: 30)",
    )
    rollout.add_argument("--quiet", action="store_true", help="no live lines, only the summary")
    rollout.add_argument("--log-level", default="ERROR", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    rollout.set_defaults(handler=_cmd_rollout)

    validate = sub.add_parser("validate", help="check a FederatedJob manifest and print it with defaults")
    validate.add_argument("manifest", type=Path)
    validate.set_defaults(handler=_cmd_validate)

    agg = sub.add_parser("aggregator", help="run a job's aggregator: gRPC for devices, HTTP for /metrics")
    agg.add_argument("--config", type=Path, required=True, help="aggregator YAML (see examples/aggregator.yaml)")
    agg.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    agg.add_argument(
        "--termination-message",
        type=Path,
        metavar="PATH",
        help="on bad input (exit 2), also write the one-line reason here: the container's terminationMessagePath",
    )
    agg.set_defaults(handler=_cmd_aggregator)

    gateway = sub.add_parser("gateway", help="run the fleet gateway: devices learn, fetch and report their model")
    gateway.add_argument("--config", type=Path, required=True, help="gateway YAML (see examples/gateway.yaml)")
    gateway.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    gateway.set_defaults(handler=_cmd_gateway)

    publish = sub.add_parser("publish", help="publish a model file to the fleet gateway; prints its digest")
    publish.add_argument("model", type=Path, help="a model file written by `fedfleet run` or an aggregator")
    publish.add_argument("--gateway", required=True, metavar="HOST:PORT", help="the gateway's gRPC address")
    publish.add_argument("--ca", type=Path, required=True, help="PEM certificate of the gateway's CA")
    publish.add_argument("--admin-token", type=Path, required=True,
                         help="the gateway's admin token, or its publish token (hex file)")  # fmt: skip
    publish.add_argument(
        "--job", help="the job the model came from (default: the run's, from summary.json beside the model)"
    )
    publish.add_argument("--attempts", type=_count, default=3, help="tries while the gateway is unreachable")
    publish.set_defaults(handler=_cmd_publish)

    sim = sub.add_parser("device-sim", help="run a job's simulated fleet against an aggregator over gRPC")
    sim.add_argument("--aggregator", required=True, metavar="HOST:PORT")
    sim.add_argument("--job", type=Path, required=True, help="the FederatedJob manifest the aggregator runs")
    sim.add_argument("--token-key", type=Path, required=True, help="the job's token key (hex file)")
    sim.add_argument("--ca", type=Path, required=True, help="PEM certificate of the job's CA")
    sim.add_argument("--devices", type=_count, help="run the first N devices of the fleet (default: all)")
    sim.add_argument("--time-scale", type=_positive, default=1.0, help="wall seconds per simulated second")
    sim.add_argument("--workers", type=_count, default=2, help="training threads")
    sim.add_argument(
        "--give-up-after",
        type=_positive,
        help="seconds the aggregator may answer nothing at all before a device gives up (default: two of the "
        "job's round deadlines at --time-scale, at least 120)",
    )
    sim.add_argument(
        "--call-timeout",
        type=_positive,
        default=10.0,
        help="seconds the first try of a short call waits for its answer; each try that runs out of time "
        "waits twice as long as the one before (default: 10)",
    )
    sim.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sim.set_defaults(handler=_cmd_device_sim)

    fleet_sim = sub.add_parser(
        "fleet-sim", help="simulated devices that follow their rollouts through a fleet gateway over gRPC"
    )
    fleet_sim.add_argument("--gateway", required=True, help="the gateway's gRPC address, host:port")
    fleet_sim.add_argument("--fleet", default="default")
    fleet_sim.add_argument("--token-key", type=Path, required=True, help="the fleet's device-token key file")
    fleet_sim.add_argument("--ca", type=Path, required=True, help="CA certificate the gateway's TLS chains to")
    fleet_sim.add_argument("--trusted-keys", type=Path, required=True, help="release signing keys, one per line")
    fleet_sim.add_argument("--devices", type=_count, default=100)
    fleet_sim.add_argument("--seed", type=int, default=0)
    fleet_sim.add_argument("--duration", type=_positive, default=None, help="seconds to run (default: until stopped)")
    fleet_sim.add_argument("--status-every", type=_positive, default=1.0, help="seconds between status lines")
    fleet_sim.add_argument("--offline-fraction", type=float, default=0.0, help="share of devices offline for a while")
    fleet_sim.set_defaults(handler=_cmd_fleet_sim)
    token = sub.add_parser("token", help="device tokens: make a job key, issue a token")
    token_sub = token.add_subparsers(dest="token_command", required=True, parser_class=_Parser)
    keygen = token_sub.add_parser("keygen", help="write a new random token key (hex, mode 0600)")
    keygen.add_argument("--out", type=Path, required=True)
    keygen.set_defaults(handler=_cmd_token_keygen)
    issue = token_sub.add_parser("issue", help="print a signed token for one device of one job or fleet")
    issue.add_argument("--key", type=Path, required=True, help="the job's (or the fleet gateway's) token key")
    audience = issue.add_mutually_exclusive_group(required=True)
    audience.add_argument("--job", help="job name (namespace/name in a cluster)")
    audience.add_argument("--fleet", help="fleet name: a token for the fleet gateway")
    issue.add_argument("--device", required=True, help="device id")
    issue.add_argument("--ttl", type=_positive, default=86400.0, help="seconds until it expires (default: 1 day)")
    issue.set_defaults(handler=_cmd_token_issue)

    certs = sub.add_parser("certs", help="create a job CA and an aggregator server certificate")
    certs.add_argument("--out", type=Path, required=True, help="directory for ca.crt, server.crt, server.key")
    certs.add_argument("--job", required=True, help="job name (for the CA's name)")
    certs.add_argument("--host", action="append", default=[], help="name or address the server is reached at")
    certs.set_defaults(handler=_cmd_certs)

    operator = sub.add_parser(
        "operator",
        help="run the FederatedJob operator (kopf); options as `python -m fedfleet.operator --help`",
        add_help=False,
    )
    operator.add_argument("operator_args", nargs=argparse.REMAINDER)
    operator.set_defaults(handler=_cmd_operator)

    ledger = sub.add_parser("ledger", help="show the per-device privacy budget ledger")
    ledger.add_argument("--ledger", type=Path, help="ledger file (default: $FEDFLEET_LEDGER or ~/.local/share/...)")
    ledger.add_argument("--budget", type=_positive, required=True, help="lifetime ε budget per device")
    ledger.add_argument("--near", type=float, default=0.9, help="flag devices at this fraction of the budget")
    ledger.set_defaults(handler=_cmd_ledger)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"fedfleet: error: {message}", file=sys.stderr)
    return code


def _logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _cmd_validate(args: argparse.Namespace) -> int:
    import yaml

    from fedfleet.api.manifest import ManifestError, load_job

    try:
        job = load_job(args.manifest)
    except ManifestError as exc:
        return _fail(str(exc))
    print(yaml.safe_dump(job.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False), end="")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from fedfleet.api.manifest import ManifestError, load_job

    try:
        job = load_job(args.manifest)
    except ManifestError as exc:
        return _fail(str(exc))
    out: Path = args.out or Path("runs") / job.metadata.name
    transport = args.transport or "grpc"
    if args.time_scale is not None and transport != "grpc":
        return _fail("--time-scale only applies to --transport grpc")

    # Heavy imports only after the manifest is known to be good, so bad input fails fast.
    from fedfleet.engine.journal import RunExistsError
    from fedfleet.persist.checkpoint import CheckpointError
    from fedfleet.runtime.local import UnsupportedOnEmbeddedRuntime
    from fedfleet.runtime.progress import RoundProgress
    from fedfleet.runtime.threads import configure_torch_threads

    configure_torch_threads()
    problem = _unusable_out(out)
    if problem is not None:
        return _fail(f"--out {out}: {problem}")
    progress: RoundProgress | None = None
    try:
        run = _prepare_run(job, out, transport, args.resume)
        _save_manifest(args, out)
        progress = RoundProgress(total=job.spec.rounds, done=run.done_rounds(), enabled=not args.quiet)
        completed = run.run(args.time_scale, progress.update)
    except (RunExistsError, CheckpointError, UnsupportedOnEmbeddedRuntime, ValueError, OSError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail(f"interrupted; continue with --resume --out {out}", 130)
    finally:
        if progress is not None:
            progress.close()
    if not completed:
        return _fail(f"the fleet stopped before the job's end; continue with --resume --out {out}", EXIT_FAILED)
    return _report(job, out)


def _cmd_rollout(args: argparse.Namespace) -> int:
    from fedfleet.api.manifest import ManifestError, load_rollout

    try:
        rollout = load_rollout(args.manifest)
    except ManifestError as exc:
        return _fail(str(exc))
    from fedfleet.rollout.analysis_runs import rules_for
    from fedfleet.rollout.errors import InvalidField
    from fedfleet.runtime.rollout_controller import check_embeddable

    try:
        check_embeddable(rollout)
        rules_for(rollout.spec)
    except InvalidField as exc:
        return _fail(f"{args.manifest}: {exc}")
    problem = _unusable_out(args.out)
    if problem is not None:
        return _fail(f"--out {args.out}: {problem}")

    # Heavy imports (torch, the gateway) only once the manifest is known to be good.
    from fedfleet.runtime.rollout import EmbeddedRollout, RolloutSettings
    from fedfleet.runtime.rollout_inputs import RolloutInputError, resolve_inputs
    from fedfleet.runtime.rollout_report import render_summary, write_reports
    from fedfleet.runtime.threads import configure_torch_threads

    configure_torch_threads()
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        inputs = resolve_inputs(rollout, args.model, args.stable)
        settings = RolloutSettings(devices=args.devices, seed=args.seed, max_minutes=args.max_minutes)
        run = EmbeddedRollout(rollout, inputs, args.out, settings, on_line=None if args.quiet else _print_line)
        outcome = asyncio.run(run.run())
    except (RolloutInputError, ValueError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"--out {args.out}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    json_path, png_path = write_reports(run, outcome, args.out)
    print(render_summary(run, outcome))
    print(f"report: {png_path}  timeline: {json_path}")
    return outcome.exit_code


def _print_line(line: str) -> None:
    print(line, flush=True)


def _cmd_operator(args: argparse.Namespace) -> int:
    from fedfleet.operator.main import main as operator_main

    return operator_main(args.operator_args)


def _cmd_ledger(args: argparse.Namespace) -> int:
    from fedfleet.privacy.ledger import LedgerError, PrivacyLedger, render_ledger_report
    from fedfleet.runtime.local import default_ledger_path

    path: Path = args.ledger or default_ledger_path()
    if not path.exists():
        return _fail(f"{path}: no privacy ledger here yet (it is created by the first job with differential privacy)")
    if not 0 < args.near <= 1:
        return _fail(f"--near must be in (0, 1], got {args.near}")
    try:
        print(render_ledger_report(PrivacyLedger(path), args.budget, fraction=args.near))
    except LedgerError as exc:
        return _fail(str(exc))
    return EXIT_OK


def _unusable_out(out: Path) -> str | None:
    """Why the run directory cannot be used, or None: checked before anything is written."""
    if out.exists() and not out.is_dir():
        return "exists and is not a directory"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the run directory: {exc.strerror or exc}"
    if not os.access(out, os.W_OK | os.X_OK):
        return "the run directory is not writable"
    return None


def _prepare_run(job: FederatedJob, out: Path, transport: str, resume: bool) -> JobRun:
    """Check the run directory's rules before anything starts; the run itself starts with `run`."""
    from fedfleet.runtime.job_run import JobRun

    return JobRun.prepare(job, out, transport, resume)


def _save_manifest(args: argparse.Namespace, out: Path) -> None:
    from fedfleet.persist.run_dir import RunPaths

    if not args.resume:
        # Keep the manifest beside its results: a run directory says what produced it.
        RunPaths(out).manifest.write_text(args.manifest.read_text(encoding="utf-8"), encoding="utf-8")


def _report(job: FederatedJob, out: Path) -> int:
    import json

    from fedfleet.engine.records import read_records
    from fedfleet.persist.run_dir import RunPaths
    from fedfleet.runtime.report import plot_rounds, render_summary

    paths = RunPaths(out)
    summary = json.loads(paths.summary.read_text(encoding="utf-8"))
    plot_rounds(paths.plot, read_records(paths.metrics), f"{job.metadata.name} ({job.spec.aggregation.strategy})")
    print(render_summary(summary))
    print(f"report: {paths.plot}  metrics: {paths.metrics}  model: {paths.model}")
    return EXIT_OK


def _cmd_aggregator(args: argparse.Namespace) -> int:
    from fedfleet.api.aggregator_config import ConfigError, load_config

    try:
        config, job = load_config(args.config)
    except ConfigError as exc:
        return _refuse_input(str(exc), args.termination_message)
    _logging(args.log_level)
    from fedfleet.aggregator.app import BadInput, serve
    from fedfleet.persist.checkpoint import CheckpointError
    from fedfleet.runtime.threads import configure_torch_threads

    configure_torch_threads()
    try:
        return asyncio.run(serve(job, config))
    except BadInput as exc:
        return _refuse_input(str(exc), args.termination_message)
    except (CheckpointError, ValueError, OSError) as exc:
        # Not the input: it went wrong while the job ran. Restarted, the aggregator resumes from its checkpoint.
        return _fail(str(exc), EXIT_FAILED)


def _refuse_input(message: str, termination_message: Path | None) -> int:
    """Exit 2 with the one-line reason, also written where the pod's terminationMessagePath points, so that
    the operator can fail the job with it (see fedfleet.api.termination)."""
    if termination_message is not None:
        from fedfleet.api.pod_environment import under_root
        from fedfleet.api.termination import write_message

        try:
            write_message(under_root(termination_message), message)
        except OSError as exc:  # the log below still says why; the operator then shows its tail
            print(f"fedfleet: cannot write {termination_message}: {exc.strerror or exc}", file=sys.stderr)
    return _fail(message, EXIT_BAD_INPUT)


def _cmd_gateway(args: argparse.Namespace) -> int:
    from fedfleet.gateway.config import ConfigError, load_gateway_config

    try:
        config = load_gateway_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    _logging(args.log_level)
    from fedfleet.gateway.app import serve
    from fedfleet.gateway.fleet_state import FleetStateError

    try:
        return asyncio.run(serve(config))
    except (FleetStateError, ValueError, OSError) as exc:
        return _fail(str(exc))


def _cmd_fleet_sim(args: argparse.Namespace) -> int:
    from fedfleet.security.tokens import read_key

    if not 0.0 <= args.offline_fraction <= 1.0:
        return _fail(f"--offline-fraction: must be between 0 and 1, got {args.offline_fraction}")
    try:
        key = read_key(args.token_key)
        ca = args.ca.read_bytes()
        from fedfleet.runtime.fleet_sim import FleetSimSettings, read_trusted_keys, run_fleet_sim
        from fedfleet.runtime.threads import configure_torch_threads

        trusted = read_trusted_keys(args.trusted_keys)
    except ValueError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename}: cannot read: {exc.strerror or exc}")
    settings = FleetSimSettings(
        gateway=args.gateway,
        fleet=args.fleet,
        token_key=key,
        ca_pem=ca,
        trusted_keys=trusted,
        devices=args.devices,
        seed=args.seed,
        duration_seconds=args.duration,
        status_every_seconds=args.status_every,
        offline_fraction=args.offline_fraction,
    )
    configure_torch_threads()
    return asyncio.run(run_fleet_sim(settings))


def _cmd_publish(args: argparse.Namespace) -> int:
    from fedfleet.security.tokens import read_key

    try:
        token = read_key(args.admin_token).hex()
        ca = args.ca.read_bytes()
    except ValueError as exc:
        return _fail(f"--admin-token {exc}")
    except OSError as exc:
        return _fail(f"--ca {args.ca}: cannot read: {exc.strerror or exc}")
    try:
        run = _run_facts(args.model)
    except ValueError as exc:
        return _fail(str(exc))
    from fedfleet.models.artifact import ArtifactError, encode
    from fedfleet.models.artifact_torch import from_model_file
    from fedfleet.proto.fleet_admin import PublishError, RetryPolicy, publish_model

    job = args.job or run.get("job") or args.model.resolve().parent.name or args.model.stem
    try:
        artifact = from_model_file(
            args.model, job=job, source=f"file:{args.model.name}", accuracy=run.get("accuracy"),
            epsilon=run.get("epsilon"),
        )  # fmt: skip
        digest = publish_model(args.gateway, ca, token, encode(artifact), policy=RetryPolicy(attempts=args.attempts))
    except ArtifactError as exc:
        return _fail(str(exc))
    except PublishError as exc:
        return _fail(str(exc), EXIT_FAILED if exc.code is not None else EXIT_BAD_INPUT)
    print(digest)
    return EXIT_OK


def _run_facts(model: Path) -> dict[str, Any]:
    """What the run directory beside a `model.pt` says about it (summary.json of `fedfleet run`): the job and,
    when the run evaluated its last round, the accuracy; the ε spent. Empty for a file outside a run dir."""
    import json
    import math

    from fedfleet.persist.run_dir import RunPaths

    paths = RunPaths(model.parent)
    if model.name != paths.model.name or not paths.summary.is_file():
        return {}
    try:
        summary = json.loads(paths.summary.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{paths.summary}: not a run summary ({exc}); pass --job to publish without it") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{paths.summary}: not a run summary; pass --job to publish without it")

    def number(value: object, low: float, high: float) -> float | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if ok and low <= value <= high else None  # type: ignore[operator, arg-type]

    job = summary.get("job")
    # An early stop (the privacy budget) may have left the last weights unevaluated: no accuracy then.
    accuracy = number(summary.get("final_accuracy"), 0.0, 1.0) if summary.get("stop_reason") is None else None
    return {
        "job": job if isinstance(job, str) and job.isprintable() and 0 < len(job) <= 256 else None,
        "accuracy": accuracy,
        "epsilon": number(summary.get("epsilon"), 0.0, math.inf),
    }


def _cmd_device_sim(args: argparse.Namespace) -> int:
    from fedfleet.api.manifest import ManifestError, load_job

    try:
        job = load_job(args.job)
    except ManifestError as exc:
        return _fail(str(exc))
    from fedfleet.security.tokens import read_key

    try:
        key = read_key(args.token_key)
        ca = args.ca.read_bytes()
    except ValueError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{args.ca}: cannot read: {exc.strerror or exc}")
    _logging(args.log_level)
    from fedfleet.runtime.threads import configure_torch_threads
    from fedfleet.sim.network_fleet import FleetSettings, render_failures, render_report, run_fleet

    configure_torch_threads()
    settings = FleetSettings(
        target=args.aggregator,
        token_key=key,
        ca_pem=ca,
        devices=args.devices,
        time_scale=args.time_scale,
        workers=args.workers,
        give_up_after=args.give_up_after,
        call_timeout=args.call_timeout,
    )
    try:
        report = asyncio.run(run_fleet(job, settings))
    except ValueError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted before the job's end", 130)
    print(render_report(report))
    for line in render_failures(report):
        print(f"fedfleet: {line}", file=sys.stderr)
    return fleet_exit_code(report)


def fleet_exit_code(report: FleetReport) -> int:
    """device-sim's exit status (see the module docstring): what is wrong first — the input, then the run;
    devices stopped from outside (`run_fleet`'s `stop`) before the end make it 3."""
    from fedfleet.sim.network_fleet import DeviceEnd

    ends = report.ends
    if ends[DeviceEnd.DONE] == report.devices:
        return EXIT_OK
    if ends[DeviceEnd.REFUSED]:
        return EXIT_BAD_INPUT
    if ends[DeviceEnd.GAVE_UP] or ends[DeviceEnd.FAILED]:
        return EXIT_FAILED
    return EXIT_STOPPED


def _cmd_token_keygen(args: argparse.Namespace) -> int:
    from fedfleet.security.tokens import new_key, write_key

    if args.out.exists():
        return _fail(f"{args.out} exists; a new key would invalidate every token issued with it")
    write_key(args.out, new_key())
    print(args.out)
    return EXIT_OK


def _cmd_token_issue(args: argparse.Namespace) -> int:
    from fedfleet.security.tokens import fleet_identity, issue_token, read_key

    try:
        audience = args.job if args.fleet is None else fleet_identity(args.fleet)
        print(issue_token(read_key(args.key), audience, args.device, args.ttl))
    except ValueError as exc:
        return _fail(str(exc))
    return EXIT_OK


def _cmd_certs(args: argparse.Namespace) -> int:
    from fedfleet.security.certs import TlsFiles, write_tls_files

    hosts = args.host or ["localhost", "127.0.0.1"]
    write_tls_files(TlsFiles.in_dir(args.out), args.job, hosts)
    print(f"{args.out}/ca.crt (give to devices), server.crt, server.key")
    return EXIT_OK


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
