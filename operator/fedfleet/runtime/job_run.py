"""`fedfleet run`: one manifest, either transport, the same run directory.

`grpc` (the default) starts an aggregator on loopback and the simulated fleet talks to it over gRPC with
TLS — the production path; `inprocess` plays the fleet inside the round loop in simulated time. Both keep
their run in a journal (`engine.journal`) and leave the same files: checkpoint, metrics.jsonl, model.pt,
summary.json.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from fedfleet.api.federatedjob import FederatedJob
from fedfleet.engine.loop import RoundCallback
from fedfleet.persist.checkpoint import load_checkpoint
from fedfleet.persist.run_dir import RunPaths
from fedfleet.runtime.local import LocalRuntime
from fedfleet.runtime.loopback import DEFAULT_TIME_SCALE, check_run_dir, run_loopback

TRANSPORTS = ("grpc", "inprocess")


@dataclass
class JobRun:
    job: FederatedJob
    out: Path
    transport: str
    local: LocalRuntime | None = None  # the in-process runtime, prepared

    @classmethod
    def prepare(cls, job: FederatedJob, out: Path, transport: str, resume: bool) -> JobRun:
        """Check the run directory (RunExistsError, CheckpointError) and what the transport can run
        (UnsupportedOnEmbeddedRuntime) before anything starts."""
        if transport not in TRANSPORTS:
            raise ValueError(f"--transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        if transport == "inprocess":
            local = LocalRuntime(job, out)
            local.prepare(resume)
            return cls(job, out, transport, local)
        check_run_dir(out, resume)
        return cls(job, out, transport)

    def done_rounds(self) -> int:
        ckpt = load_checkpoint(RunPaths(self.out).checkpoint)
        return ckpt.round if ckpt is not None else 0

    def run(self, time_scale: float | None, on_round: RoundCallback) -> bool:
        """Run to the job's end (True) or until the fleet stopped first (False; resume continues it)."""
        if self.local is not None:
            self.local.run(on_round)
            return self.local.end is not None and self.local.end.complete
        result = asyncio.run(run_loopback(self.job, self.out, time_scale or DEFAULT_TIME_SCALE, on_round=on_round))
        return result.completed
