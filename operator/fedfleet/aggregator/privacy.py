"""Differential privacy for the aggregator: the job's `JobPrivacy`, its ledger key and its metrics.

The engine does the DP work (central: clipping plus noise in the round's rule; both modes: the accountant and
the ledger charges); with distributed DP the devices add the noise under secure aggregation (secure_round).
This module only builds the inputs for a long-running aggregator and exports ε on /metrics.

Fleet size: q, the sampling rate the noise multiplier is planned with, is the job's *planned* fleet (the
aggregator configuration's `fleetSize`), not the devices that happened to have checked in when the first round started —
that number depends on who was online at that moment and would change the planned noise from run to run.
Each round's accountant charge still uses the q of the devices actually eligible then (`before_round`).

Ledger key: the job identity plus the run id of the state dir's journal. A restarted aggregator reads the same id,
so replaying a round whose charge was written before a crash charges nobody twice (the ledger is idempotent
per job key, round and device); a new state dir gets a new id, so a new run of the same job is charged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from fedfleet.api.federatedjob import FederatedJob

if TYPE_CHECKING:  # the DP libraries load only for jobs that use them
    from fedfleet.engine.server import FederatedServer
    from fedfleet.privacy.job import JobPrivacy
    from fedfleet.privacy.ledger import PrivacyLedger
    from fedfleet.privacy.metrics import PrivacyMetrics

LEDGER_FILE = "privacy-ledger.db"


def uses_privacy(job: FederatedJob) -> bool:
    return job.spec.privacy.differential_privacy.mode != "off"


def ledger_path(ledger: Path | None, state_dir: Path) -> Path:
    return ledger if ledger is not None else state_dir / LEDGER_FILE


def build_job_privacy(job: FederatedJob, fleet_size: int, ledger_file: Path, ledger_key: str) -> JobPrivacy:
    """The job's privacy state, planned for a fleet of `fleet_size` devices, with the ledger opened (created)
    at `ledger_file` and charges kept under `ledger_key` (the job identity and the run id)."""
    from fedfleet.privacy.job import JobPrivacy
    from fedfleet.privacy.ledger import PrivacyLedger

    ledger_file.parent.mkdir(parents=True, exist_ok=True)
    ledger = PrivacyLedger(ledger_file)
    return JobPrivacy(job.spec, fleet_size, ledger, ledger_key)


class PrivacyExporter:
    """Keeps the privacy metrics of one job in step with its server: call `update()` after each round."""

    def __init__(self, registry: CollectorRegistry, job: FederatedJob, server: FederatedServer) -> None:
        from fedfleet.privacy.metrics import PrivacyMetrics

        self.metrics: PrivacyMetrics = PrivacyMetrics(registry)
        self.namespace = job.metadata.namespace or ""
        self.name = job.metadata.name
        self.server = server
        self.target = job.spec.privacy.differential_privacy.target_epsilon
        self.budget = job.spec.privacy.device_epsilon_budget

    @property
    def ledger(self) -> PrivacyLedger | None:
        privacy = self.server.privacy
        return privacy.ledger if privacy is not None else None

    def update(self) -> None:
        epsilon = self.server.epsilon
        if epsilon is not None:
            self.metrics.set_job_epsilon(self.namespace, self.name, epsilon, self.target)
        ledger = self.ledger
        if ledger is not None:
            self.metrics.update_from_ledger(ledger, self.budget)
