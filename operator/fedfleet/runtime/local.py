"""The embedded runtime: `fedfleet run --transport inprocess`, a whole federated job in one process.

It is the round loop (`engine.loop`) with the in-process transport (`runtime.inprocess`) and a run journal:
the same rounds, records, checkpoints and stop reasons as the aggregator over gRPC, in simulated time, and
bit-for-bit reproducible, including after `--resume`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np

from fedfleet.aggregator.evaluation import ServerEvaluator
from fedfleet.api.federatedjob import FederatedJob
from fedfleet.engine.journal import RunEnd, RunJournal
from fedfleet.engine.loop import RoundCallback, RoundLoop, record_observer
from fedfleet.engine.records import RoundRecord
from fedfleet.engine.server import FederatedServer
from fedfleet.runtime.inprocess import InProcessTransport
from fedfleet.sim.task import SimulatedTask, build_task


def default_ledger_path() -> Path:
    """The machine's privacy ledger: ε accumulates per device across every job run here."""
    configured = os.environ.get("FEDFLEET_LEDGER")
    if configured:
        return Path(configured)
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "fedfleet" / "privacy-ledger.db"


class UnsupportedOnEmbeddedRuntime(Exception):
    """The job asks for something the embedded runtime cannot do."""


class LocalRuntime:
    def __init__(
        self, job: FederatedJob, out_dir: Path, task: SimulatedTask | None = None, ledger_path: Path | None = None
    ) -> None:
        self.job = job
        self.spec = job.spec
        if self.spec.privacy.secure_aggregation.enabled:
            raise UnsupportedOnEmbeddedRuntime(
                "spec.privacy.secureAggregation: secure aggregation runs between devices and the aggregator over"
                " gRPC; run the job with `fedfleet run --transport grpc` (the default)"
            )
        self.task = task or build_task(self.spec)
        self.journal = RunJournal(out_dir)
        self.paths = self.journal.paths
        self.ledger_path = ledger_path
        self.server = FederatedServer(self.spec, self.task.model.initial_weights())
        self.transport = InProcessTransport(self.task, self.server)
        self.end: RunEnd | None = None

    @property
    def records(self) -> list[RoundRecord]:
        return self.journal.records

    @property
    def stop_reason(self) -> str | None:
        """Why the job ended before its last round (its privacy budget), or None."""
        return self.end.early_stop if self.end is not None else None

    def prepare(self, resume: bool) -> None:
        """Start fresh, or continue from the checkpoint; never silently overwrite an earlier run."""
        ckpt = self.journal.prepare(resume)
        self._attach_privacy()
        if ckpt is not None:
            self.server.restore(ckpt)

    def _attach_privacy(self) -> None:
        """Differential privacy, with the ledger keyed by this run's id so a resumed run never charges twice."""
        if self.spec.privacy.differential_privacy.mode == "off":
            return
        from fedfleet.privacy.job import JobPrivacy
        from fedfleet.privacy.ledger import PrivacyLedger

        ledger = PrivacyLedger(self.ledger_path or default_ledger_path())
        job_key = f"{self.job.metadata.name}/{self.journal.run_id()}"
        self.server.privacy = JobPrivacy(self.spec, len(self.task.fleet), ledger, job_key)

    def run(self, on_round: RoundCallback | None = None) -> list[RoundRecord]:
        test = self.task.test
        loop = RoundLoop(
            self.server,
            self.journal,
            self.transport,
            evaluator=ServerEvaluator(self.task.model, test) if test is not None else None,
            observers=[record_observer(on_round)] if on_round is not None else [],
        )
        self.end = asyncio.run(loop.run())
        if self.end.complete:
            # The same outputs as the aggregator's: the trained model and summary.json.
            self.save_model()
            self.journal.write_summary(self.job.metadata.name, self.server.totals.to_json(), self.end)
        return self.records

    def request_stop(self) -> None:
        """End the run after the round in progress (from an on_round callback): it stays resumable."""
        self.transport.stopping = True

    def final_weights(self) -> np.ndarray:
        return self.server.weights.copy()

    def save_model(self) -> Path:
        return self.task.model.save(self.paths.model, self.server.weights, self.server.round)
