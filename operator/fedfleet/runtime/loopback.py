"""`fedfleet run --transport grpc`: the aggregator on loopback and the simulated fleet talking to it over
gRPC with TLS, in one process — the production path, as a quick local run.

The run directory holds what `fedfleet run` writes (checkpoint, metrics.jsonl, model, summary) plus the
job's TLS files and token key under `tls/` and `token.key`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from fedfleet.aggregator.app import AggregatorApp, prepare_security
from fedfleet.api.aggregator_config import AggregatorConfig, AuthSection, Endpoint, EvaluationData, TlsSection
from fedfleet.api.federatedjob import FederatedJob
from fedfleet.engine.journal import RunJournal
from fedfleet.engine.loop import RoundCallback
from fedfleet.engine.records import RoundRecord
from fedfleet.runtime.local import default_ledger_path
from fedfleet.sim.network_fleet import FleetReport, FleetSettings, run_fleet
from fedfleet.sim.task import build_task

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
    """The rules of `fedfleet run --out`, before anything starts: never silently overwrite an earlier run
    (RunExistsError), resume only this directory's own (CheckpointError)."""
    RunJournal(out).prepare(resume)


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
        # The simulated fleet is the job's fleet: its size plans DP, its dataset is the model's data.
        fleet_size=job.spec.simulation.devices,
        evaluation=EvaluationData(dataset=job.spec.simulation.dataset, test_samples=job.spec.simulation.test_samples),
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
    app = AggregatorApp(job, config, security, inputs=task.aggregator_inputs())
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
    return LoopbackResult(app.records, report, app, completed, app.stop_reason)
