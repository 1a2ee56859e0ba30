"""`fedfleet run --transport grpc`: the aggregator on loopback and the simulated fleet talking to it over
gRPC with TLS, in one process — the production path, as a quick local run.

The run directory holds what `fedfleet run` writes (checkpoint, metrics.jsonl, model, summary) plus the
job's TLS files and token key under `tls/` and `token.key`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from fedfleet.api.aggregator_config import AggregatorConfig, AuthSection, Endpoint, TlsSection
from fedfleet.api.federatedjob import FederatedJob
from fedfleet.persist.checkpoint import CheckpointError
from fedfleet.runtime.local import RunExistsError, default_ledger_path
from fedfleet.runtime.records import RoundRecord, RunPaths
from fedfleet.runtime.task import build_task
from fedfleet.sim.network_fleet import FleetReport, FleetSettings, run_fleet

from .app import AggregatorApp, prepare_security
from .coordinator import RoundCallback

#: Wall seconds per simulated second of the demo fleet: the example job's devices take ~1–30 simulated
#: seconds per round, so rounds last tens of milliseconds to a second or two.
DEFAULT_TIME_SCALE = 0.02


@dataclass
class LoopbackResult:
    records: list[RoundRecord]
    fleet: FleetReport
    app: AggregatorApp
    completed: bool
    stop_reason: str | None = None  # why a complete job ended before its last round (its privacy budget)


def check_run_dir(out: Path, resume: bool) -> None:
    """The rules of `fedfleet run --out`: never silently overwrite an earlier run, resume only a real one."""
    paths = RunPaths(out)
    if resume:
        if paths.metrics.exists() and not paths.checkpoint.exists():
            raise CheckpointError(f"{out}: metrics exist but the checkpoint is missing")
    elif paths.metrics.exists() or paths.checkpoint.exists():
        raise RunExistsError(f"{out} already holds a run; pass --resume or choose another --out")


def loopback_config(
    job: FederatedJob, out: Path, time_scale: float, ledger_path: Path | None = None
) -> AggregatorConfig:
    """The aggregator of `fedfleet run`; DP jobs charge the machine's ledger, as with `--transport inprocess`."""
    return AggregatorConfig(
        job=job.model_dump(mode="json", by_alias=True, exclude_none=True),
        listen=Endpoint(host="127.0.0.1", port=0),
        http=None,
        tls=TlsSection(cert=out / "tls/server.crt", key=out / "tls/server.key", ca=out / "tls/ca.crt", generate=True),
        auth=AuthSection(token_key=out / "token.key", generate=True),
        state_dir=out,
        ledger_path=ledger_path or default_ledger_path(),
        time_scale=time_scale,
        settle_seconds=0.5,
        poll_seconds=5.0,
        linger_seconds=1.0,
    )


async def run_loopback(
    job: FederatedJob,
    out: Path,
    time_scale: float = DEFAULT_TIME_SCALE,
    on_round: RoundCallback | None = None,
    ledger_path: Path | None = None,
) -> LoopbackResult:
    config = loopback_config(job, out, time_scale, ledger_path)
    security = prepare_security(config, job)
    task = build_task(job.spec)
    app = AggregatorApp(job, config, security, task=task)
    await app.start()
    try:
        settings = FleetSettings(
            target=f"127.0.0.1:{app.grpc_port}",
            token_key=security.token_key,
            ca_pem=security.ca_pem,
            time_scale=time_scale,
            give_up_after=30.0,
        )
        stop_fleet = asyncio.Event()
        fleet = asyncio.create_task(run_fleet(job, settings, task=task, stop=stop_fleet))
        try:
            completed = await app.run(on_round)
            if completed:
                await app.linger()
        finally:
            app.request_stop()
            # Devices that dropped out sleep until their round's deadline; the job is over, so wake them.
            stop_fleet.set()
        report = await fleet
    finally:
        await app.stop()
    return LoopbackResult(app.coordinator.records, report, app, completed, app.stop_reason)
