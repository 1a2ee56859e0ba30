"""The `fedfleet` command.

Exit status: 0 success, 1 the job failed while running, 2 bad input (manifest, arguments, existing run).
Bad input is reported as one line naming the field and the rule, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedfleet", description="Kubernetes-native federated learning for edge fleets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a FederatedJob manifest on the embedded local runtime")
    run.add_argument("manifest", type=Path, help="FederatedJob YAML file")
    run.add_argument("--out", type=Path, help="run directory (default: runs/<job name>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=_cmd_run)

    validate = sub.add_parser("validate", help="check a FederatedJob manifest and print it with defaults")
    validate.add_argument("manifest", type=Path)
    validate.set_defaults(handler=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"fedfleet: error: {message}", file=sys.stderr)
    return code


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

    # Heavy imports only after the manifest is known to be good, so bad input fails fast.
    from fedfleet.persist.checkpoint import CheckpointError
    from fedfleet.runtime.local import LocalRuntime, RunExistsError
    from fedfleet.runtime.progress import RoundProgress
    from fedfleet.runtime.report import plot_rounds, render_summary, summarize, write_summary
    from fedfleet.runtime.threads import configure_torch_threads

    configure_torch_threads()
    try:
        runtime = LocalRuntime(job, out)
        runtime.prepare(resume=args.resume)
    except (RunExistsError, CheckpointError, ValueError) as exc:
        return _fail(str(exc))
    if not args.resume:
        # Keep the manifest beside its results: a run directory says what produced it.
        runtime.paths.manifest.write_text(args.manifest.read_text(encoding="utf-8"), encoding="utf-8")

    progress = RoundProgress(total=job.spec.rounds, done=runtime.server.round, enabled=not args.quiet)
    try:
        records = runtime.run(on_round=progress.update)
    except KeyboardInterrupt:
        progress.close()
        return _fail(f"interrupted after round {runtime.server.round}; continue with --resume --out {out}", 130)
    progress.close()

    runtime.save_model()
    summary = summarize(records, job.metadata.name, runtime.server.totals.to_json())
    write_summary(runtime.paths.summary, summary)
    plot_rounds(runtime.paths.plot, records, f"{job.metadata.name} ({job.spec.aggregation.strategy})")
    print(render_summary(summary))
    print(f"report: {runtime.paths.plot}  metrics: {runtime.paths.metrics}  model: {runtime.paths.model}")
    return EXIT_OK


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
