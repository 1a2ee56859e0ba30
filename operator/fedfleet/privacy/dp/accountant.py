"""Privacy accounting for DP-FedAvg rounds with Google's `dp-accounting` library.

One round of DP-FedAvg is a *Poisson-sampled Gaussian mechanism*: each device of the fleet takes part with
probability q, the clipped updates (L2 sensitivity C) are summed and N(0, (zC)²) noise is added. A job is the
adaptive composition of its rounds. Every ε here comes from the library's accountants; this module only
builds the `DpEvent` that describes the rounds and searches over z.

Which accountant
----------------
``method="rdp"`` (the default) uses `dp_accounting.rdp.RdpAccountant` (Rényi DP, Mironov 2017; Mironov,
Talwar & Zhang 2019 for the sampled Gaussian; the RDP→(ε, δ) conversion of Canonne, Kamath & Steinke 2020).
It is what TF Privacy and TensorFlow Federated report for DP-FedAvg, it is an upper bound on the true ε (so
the job never spends more than it says), and it costs ~10 ms for any number of rounds, which matters because
the budget check runs before every round and calibration evaluates ε ~50 times.

``method="pld"`` uses `dp_accounting.pld.PLDAccountant` (privacy loss distributions, Koskela et al. 2020;
Doroshenko et al. 2022) with pessimistic discretisation: also an upper bound, ~8–12% tighter than RDP for
typical settings (so more rounds fit in a budget), but 10–50× slower. Pick it per job if the budget is tight.

The amplification assumption
----------------------------
Both accountants assume *Poisson sampling*: every device is in a round's cohort independently with
probability q, so the cohort size varies. fedfleet's cohort selection instead invites a fixed number,
``ceil(clientsPerRound·overSelection)``, uniformly without replacement from the devices that are *available*.
We use q = invited / fleet size. The gaps, stated honestly:

- fixed-size sampling without replacement is not Poisson sampling; the two give close but not identical ε
  (and under the add/remove relation fixed-size sampling has no tight analysis in this library);
- availability is not random: a device that is online more often is sampled more often than q, and the
  amplification the accountant credits depends on the server's coin flips being secret and independent of
  the device. The guarantee is therefore only as good as "devices are sampled uniformly at rate q".

The per-device ledger (:mod:`fedfleet.privacy.ledger`) does not rely on amplification at all: it charges each
participating device the un-amplified ε of one round, so it stays valid when the assumption above does not.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dp_accounting
from dp_accounting import pld, rdp

from fedfleet.api.federatedjob import DifferentialPrivacySpec

Method = Literal["rdp", "pld"]
METHODS: tuple[Method, ...] = ("rdp", "pld")

# PLD grid of privacy-loss values: 1e-4 is the library default and keeps ε within ~0.1% of the exact value.
_PLD_DISCRETIZATION = 1e-4
# The largest z calibration will look at. Beyond it, any sane target is met; failing to meet one there means
# the target is unreachable (e.g. rounds so many that even enormous noise cannot help — it always can).
_MAX_NOISE_MULTIPLIER = 1e4


class PrivacyBudgetExceeded(Exception):
    """Running another round would spend more than the job's ε budget."""

    def __init__(self, epsilon_after: float, target_epsilon: float, round_number: int) -> None:
        super().__init__(
            f"round {round_number} would raise ε to {epsilon_after:.4g}, above the budget of {target_epsilon:.4g}"
        )
        self.epsilon_after = epsilon_after
        self.target_epsilon = target_epsilon
        self.round_number = round_number


@dataclass(frozen=True)
class RoundRun:
    """`count` consecutive rounds with the same noise multiplier and sampling rate (run-length encoded)."""

    noise_multiplier: float
    sampling_rate: float
    count: int


def check_round_parameters(noise_multiplier: float, sampling_rate: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if not (math.isfinite(sampling_rate) and 0 <= sampling_rate <= 1):
        raise ValueError(f"sampling_rate must be in [0, 1], got {sampling_rate!r}")


def check_delta(delta: float) -> None:
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def check_method(method: str) -> Method:
    if method == "rdp":
        return "rdp"
    if method == "pld":
        return "pld"
    raise ValueError(f"accounting method must be one of {', '.join(METHODS)}, got {method!r}")


def sampling_rate(invited_per_round: int, fleet_size: int) -> float:
    """q: the chance a given device is invited to a round, min(1, invited / fleet)."""
    if invited_per_round < 1 or fleet_size < 1:
        raise ValueError(f"invited_per_round and fleet_size must be >= 1, got {invited_per_round}, {fleet_size}")
    return min(1.0, invited_per_round / fleet_size)


def _round_event(noise_multiplier: float, sampling_rate: float) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate >= 1.0:
        return gaussian  # everyone takes part: no amplification
    return dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)


def epsilon_of_runs(runs: Sequence[RoundRun], delta: float, method: Method = "rdp") -> float:
    """ε(δ) of the composition of `runs` (possibly different z and q per run)."""
    check_delta(delta)
    method = check_method(method)
    events: list[dp_accounting.DpEvent] = []
    for run in runs:
        check_round_parameters(run.noise_multiplier, run.sampling_rate)
        if run.count < 0:
            raise ValueError(f"round count must be >= 0, got {run.count}")
        if run.count == 0 or run.sampling_rate == 0:
            continue  # nobody's data was used: no privacy cost
        if run.noise_multiplier == 0:
            return math.inf  # an un-noised release of a sampled device's update has no finite ε
        event = _round_event(run.noise_multiplier, run.sampling_rate)
        events.append(dp_accounting.SelfComposedDpEvent(event, run.count))
    if not events:
        return 0.0
    accountant: dp_accounting.PrivacyAccountant
    if method == "rdp":
        accountant = rdp.RdpAccountant()
    else:
        accountant = pld.PLDAccountant(value_discretization_interval=_PLD_DISCRETIZATION)
    with _quiet_absl():
        accountant.compose(dp_accounting.ComposedDpEvent(events))
        return max(0.0, float(accountant.get_epsilon(delta)))


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting warns (through absl) when a fractional RDP order fails to converge and leaves that order
    out. ε is a minimum over the orders, so the bound stays valid; the warning is noise for our users."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def epsilon_spent(
    noise_multiplier: float, sampling_rate: float, rounds: int, delta: float, method: Method = "rdp"
) -> float:
    """ε(δ) after `rounds` rounds of the Poisson-sampled Gaussian mechanism with noise multiplier z and rate q.

    z = σ/C (noise standard deviation over the L2 sensitivity). z = 0 with q > 0 is not private: ε = ∞.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    return epsilon_of_runs([RoundRun(noise_multiplier, sampling_rate, rounds)], delta, method)


def per_participation_epsilon(noise_multiplier: float, delta: float, method: Method = "rdp") -> float:
    """ε of one round for a device that *did* take part: the Gaussian mechanism without sampling (q = 1).

    This is what the per-device ledger charges: it does not lean on the amplification assumption.
    """
    return epsilon_spent(noise_multiplier, 1.0, 1, delta, method)


def calibrate_noise_multiplier(
    target_epsilon: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    method: Method = "rdp",
    tolerance: float = 1e-3,
) -> float:
    """The smallest z (to within `tolerance`, relative) whose ε after `rounds` rounds is at most the target.

    Bisection on z, which works because ε is decreasing in z. The returned z always meets the target
    (it is the upper end of the final bracket), so a job calibrated with it never overspends.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not (math.isfinite(tolerance) and 0 < tolerance < 1):
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
    check_round_parameters(0.0, sampling_rate)

    def eps(z: float) -> float:
        return epsilon_spent(z, sampling_rate, rounds, delta, method)

    if rounds == 0 or sampling_rate == 0:
        return 0.0
    # Bracket: lo fails the target, hi meets it. Grow hi geometrically from a small guess.
    lo, hi = 0.0, 0.5
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > _MAX_NOISE_MULTIPLIER:
            raise ValueError(
                f"no noise multiplier up to {_MAX_NOISE_MULTIPLIER:g} reaches ε = {target_epsilon} "
                f"over {rounds} rounds at q = {sampling_rate}, δ = {delta}"
            )
    while hi - lo > tolerance * hi:
        mid = (lo + hi) / 2
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


class PrivacyAccountant:
    """The ε ledger of one job: the (z, q) of every released round, and the ε they add up to.

    The server asks :meth:`check_next_round` before opening a round and calls :meth:`record_round` after a round
    whose aggregate was released (a failed round releases nothing and costs nothing). Its state is a dict of
    plain numbers for the checkpoint, so a resumed job continues with the same ε.
    """

    def __init__(
        self,
        delta: float,
        noise_multiplier: float,
        sampling_rate: float,
        method: Method = "rdp",
    ) -> None:
        """`noise_multiplier` and `sampling_rate` are the planned per-round values, used by default."""
        check_delta(delta)
        check_round_parameters(noise_multiplier, sampling_rate)
        self.delta = float(delta)
        self.method = check_method(method)
        self.noise_multiplier = float(noise_multiplier)
        self.sampling_rate = float(sampling_rate)
        self._runs: list[RoundRun] = []
        self._epsilon = 0.0

    @property
    def rounds(self) -> int:
        return sum(run.count for run in self._runs)

    @property
    def runs(self) -> tuple[RoundRun, ...]:
        return tuple(self._runs)

    @property
    def epsilon(self) -> float:
        """ε(δ) spent by the rounds recorded so far."""
        return self._epsilon

    def _with_round(self, noise_multiplier: float, sampling_rate: float) -> list[RoundRun]:
        check_round_parameters(noise_multiplier, sampling_rate)
        runs = list(self._runs)
        last = runs[-1] if runs else None
        if last is not None and (last.noise_multiplier, last.sampling_rate) == (noise_multiplier, sampling_rate):
            runs[-1] = RoundRun(noise_multiplier, sampling_rate, last.count + 1)
        else:
            runs.append(RoundRun(noise_multiplier, sampling_rate, 1))
        return runs

    def epsilon_after_next(self, noise_multiplier: float | None = None, sampling_rate: float | None = None) -> float:
        """ε(δ) the job would have spent if one more round ran with (z, q) (default: the planned values)."""
        z = self.noise_multiplier if noise_multiplier is None else float(noise_multiplier)
        q = self.sampling_rate if sampling_rate is None else float(sampling_rate)
        return epsilon_of_runs(self._with_round(z, q), self.delta, self.method)

    def check_next_round(
        self, target_epsilon: float, noise_multiplier: float | None = None, sampling_rate: float | None = None
    ) -> float:
        """Raise PrivacyBudgetExceeded if the next round would exceed the target; otherwise return its ε."""
        after = self.epsilon_after_next(noise_multiplier, sampling_rate)
        if after > target_epsilon:
            raise PrivacyBudgetExceeded(after, target_epsilon, self.rounds + 1)
        return after

    def record_round(self, noise_multiplier: float | None = None, sampling_rate: float | None = None) -> float:
        """Add one released round; returns the new total ε."""
        z = self.noise_multiplier if noise_multiplier is None else float(noise_multiplier)
        q = self.sampling_rate if sampling_rate is None else float(sampling_rate)
        runs = self._with_round(z, q)
        self._epsilon = epsilon_of_runs(runs, self.delta, self.method)
        self._runs = runs
        return self._epsilon

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: plain numbers (and the method name) only."""
        return {
            "delta": self.delta,
            "method": self.method,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "runs": [[r.noise_multiplier, r.sampling_rate, r.count] for r in self._runs],
            "epsilon": self._epsilon,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PrivacyAccountant:
        """Rebuild from :meth:`state_dict`. ε is recomputed from the runs, never trusted from the file."""
        try:
            accountant = cls(
                float(state["delta"]),
                float(state["noise_multiplier"]),
                float(state["sampling_rate"]),
                check_method(str(state.get("method", "rdp"))),
            )
            runs = [RoundRun(float(z), float(q), int(n)) for z, q, n in state["runs"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid privacy accountant state: {exc}") from None
        for run in runs:
            check_round_parameters(run.noise_multiplier, run.sampling_rate)
            if run.count < 1:
                raise ValueError(f"invalid privacy accountant state: run with {run.count} rounds")
        accountant._runs = runs
        accountant._epsilon = epsilon_of_runs(runs, accountant.delta, accountant.method)
        return accountant


def resolve_noise_multiplier(
    dp: DifferentialPrivacySpec, sampling_rate: float, rounds: int, method: Method = "rdp"
) -> float:
    """z for the job: `noiseMultiplier` when set, else calibrated so all `rounds` fit in `targetEpsilon`."""
    if dp.noise_multiplier is not None:
        return float(dp.noise_multiplier)
    if dp.target_epsilon is None:
        raise ValueError("privacy.differentialPrivacy: set noiseMultiplier, or targetEpsilon to calibrate it from")
    try:
        return calibrate_noise_multiplier(dp.target_epsilon, sampling_rate, rounds, dp.delta, method)
    except ValueError as exc:
        # Whether a target can be reached takes the accountant to find out, which no CEL rule can run: name the
        # field here, where the job's aggregator (or `fedfleet run`) finds out.
        raise ValueError(
            f"privacy.differentialPrivacy.targetEpsilon: cannot be reached: {exc}; raise it, or run fewer rounds "
            "or invite fewer devices per round"
        ) from None
