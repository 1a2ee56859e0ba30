"""A job's privacy state: what the server consults before, during and after each round.

Before a round: devices whose lifetime ε budget cannot afford one more participation are excluded from
selection, and the accountant refuses the round if it would take the job's ε above its target. During a
round (central DP): the strategy's rule is replaced by clipping plus Gaussian noise on the sum. After a
round that released its aggregate: the accountant records it and the ledger charges each participant.
A failed round releases nothing and costs nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.privacy.dp.accountant import (
    PrivacyAccountant,
    per_participation_epsilon,
    resolve_noise_multiplier,
    sampling_rate,
)
from fedfleet.privacy.dp.central import CentralDP, CentralDPRule, central_dp_from_spec
from fedfleet.privacy.ledger import PrivacyLedger


class DevicesExhausted(Exception):
    """Too few devices have ε budget left for a round to reach its minimum number of reports."""


class JobPrivacy:
    def __init__(
        self,
        spec: FederatedJobSpec,
        fleet_size: int,
        ledger: PrivacyLedger | None,
        job_key: str,
    ) -> None:
        dp = spec.privacy.differential_privacy
        if dp.mode == "off":
            raise ValueError("JobPrivacy needs privacy.differentialPrivacy.mode to be central or distributed")
        self.dp = dp
        self.invited = spec.cohort.invited
        self.min_reports = spec.cohort.effective_min_reports
        # q is planned on the whole fleet; the accountant is charged the q of each round's eligible devices.
        self.q = sampling_rate(self.invited, fleet_size)
        self.noise_multiplier = resolve_noise_multiplier(dp, self.q, spec.rounds)
        self.accountant = PrivacyAccountant(dp.delta, self.noise_multiplier, self.q)
        self.central: CentralDP | None = (
            central_dp_from_spec(dp, self.noise_multiplier, spec.cohort.clients_per_round)
            if dp.mode == "central"
            else None
        )
        self.ledger = ledger
        self.job_key = job_key
        self.device_budget = spec.privacy.device_epsilon_budget
        self.charge_per_participation = per_participation_epsilon(self.noise_multiplier, dp.delta)

    @property
    def epsilon(self) -> float:
        return self.accountant.epsilon

    def excluded_devices(self) -> frozenset[str]:
        if self.ledger is None or self.device_budget is None:
            return frozenset()
        return frozenset(self.ledger.cannot_afford(self.device_budget, self.charge_per_participation))

    def before_round(self, eligible: int) -> None:
        """Raise DevicesExhausted or PrivacyBudgetExceeded if the next round must not run. Changes nothing."""
        if eligible < self.min_reports:
            raise DevicesExhausted(
                f"only {eligible} devices have ε budget left; a round needs cohort.minReports = {self.min_reports}"
            )
        q = sampling_rate(self.invited, eligible)
        if self.dp.target_epsilon is not None:
            self.accountant.check_next_round(self.dp.target_epsilon, sampling_rate=q)
        self.q = q

    def rule_for_round(self, rng: np.random.Generator) -> CentralDPRule | None:
        return self.central.for_round(rng) if self.central is not None else None

    def after_release(self, round_number: int, participants: list[str]) -> float:
        """Charge the participants and record the round; returns the job's ε so far.

        The ledger is charged first and idempotently per (job, round, device): if the process dies before the
        checkpoint, the replayed round charges nobody twice.
        """
        if self.ledger is not None:
            self.ledger.charge(self.job_key, round_number, participants, self.charge_per_participation)
        return self.accountant.record_round(sampling_rate=self.q)

    def state_dict(self) -> dict[str, Any]:
        return {
            "accountant": self.accountant.state_dict(),
            "central": self.central.state_dict() if self.central is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accountant = PrivacyAccountant.from_state(state["accountant"])
        if self.central is not None and state.get("central") is not None:
            self.central.load_state_dict(state["central"])
