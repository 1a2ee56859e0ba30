"""The `fedfleet` command.

Exit status: 0 success, 1 the job failed while running, 2 bad input (manifest, arguments, existing run),
3 stopped before the end (the state dir resumes it). Bad input is reported as one line naming the field and
the rule, never as a traceback.

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
from typing import TYPE_CHECKING

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

    validate = sub.add_parser("validate", help="check a FederatedJob manifest and print it with defaults")
    validate.add_argument("manifest", type=Path)
    validate.set_defaults(handler=_cmd_validate)

    agg = sub.add_parser("aggregator", help="run a job's aggregator: gRPC for devices, HTTP for /metrics")
    agg.add_argument("--config", type=Path, required=True, help="aggregator YAML (see examples/aggregator.yaml)")
    agg.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    agg.set_defaults(handler=_cmd_aggregator)

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

    token = sub.add_parser("token", help="device tokens: make a job key, issue a token")
    token_sub = token.add_subparsers(dest="token_command", required=True, parser_class=_Parser)
    keygen = token_sub.add_parser("keygen", help="write a new random token key (hex, mode 0600)")
    keygen.add_argument("--out", type=Path, required=True)
    keygen.set_defaults(handler=_cmd_token_keygen)
    issue = token_sub.add_parser("issue", help="print a signed token for one device of one job")
    issue.add_argument("--key", type=Path, required=True, help="the job's token key")
    issue.add_argument("--job", required=True, help="job name (namespace/name in a cluster)")
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
        return _fail(str(exc))
    _logging(args.log_level)
    from fedfleet.aggregator.app import serve
    from fedfleet.persist.checkpoint import CheckpointError
    from fedfleet.runtime.threads import configure_torch_threads

    configure_torch_threads()
    try:
        return asyncio.run(serve(job, config))
    except (CheckpointError, ValueError, OSError) as exc:
        return _fail(str(exc))


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
    from fedfleet.security.tokens import issue_token, read_key

    try:
        print(issue_token(read_key(args.key), args.job, args.device, args.ttl))
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
