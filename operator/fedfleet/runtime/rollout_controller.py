"""The ModelRollout controller of the embedded runtime: what `operator/rollout_controller.py` does in a
cluster, in process, against a `Gateway` object instead of the Kubernetes API and Prometheus.

One `reconcile(now)` follows the operator's order exactly: the analysis runs the step machine wants are
synced, the due ones measured, the step machine decides, the revision's cohort salt is set, the candidate's
release record is signed (once per revision), and the fleet's view derived from the new state is handed to
the gateway. The view, its merge with the fleet's stable version and its releases come from the operator's
own pure helpers (`operator.reconcile.modelrollout`), so a manifest steps the same way in both places.

What differs is where numbers come from and where state lives:
- metrics come from the `builtin` provider: the gateway's own health aggregates since the view's current
  generation (`gateway.builtin_metrics`); `prometheus` metrics need a cluster and are refused up front
  (`check_embeddable`);
- the rollout's status is this object's attributes, and the salt's "uid" is given (the runtime derives it
  from its seed, so a run is reproducible);
- `reconcile` is synchronous: nothing a device does can come between a decision and the view that carries
  it out.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedfleet.api.modelrollout import ModelRollout
from fedfleet.api.rollout_status import BACKGROUND_STEP, RolloutPhase
from fedfleet.gateway.builtin_metrics import builtin_sample
from fedfleet.gateway.core import Gateway
from fedfleet.gateway.releases import SignedParts
from fedfleet.models.artifact import ReleaseRecord, SignedRelease
from fedfleet.operator.reconcile import modelrollout as plan
from fedfleet.rollout import analysis_runs
from fedfleet.rollout.analysis import Measurement, RunPhase, Sample
from fedfleet.rollout.assignment import FleetView
from fedfleet.rollout.errors import InvalidField
from fedfleet.rollout.step_state import StepState
from fedfleet.rollout.steps import Decision, Observation, decide
from fedfleet.rollout.timestamps import rfc3339
from fedfleet.security.releases import sign_release
from fedfleet.security.signing import SigningKey

JSON = dict[str, Any]


def check_embeddable(rollout: ModelRollout) -> None:
    """Refuse what the embedded runtime cannot measure; InvalidField names the metric's provider."""
    for index, metric in enumerate(rollout.spec.analysis.metrics):
        if metric.provider.builtin is None:
            raise InvalidField(
                f"spec.analysis.metrics[{index}].provider",
                "fedfleet rollout measures builtin metrics only (prometheus needs a cluster: kubectl apply it)",
            )


@dataclass(frozen=True)
class MeasurementTaken:
    metric: str
    step: int  # the analysis step it gates; BACKGROUND_STEP for a background metric
    measurement: Measurement
    run_phase: RunPhase  # the run's phase after it

    @property
    def background(self) -> bool:
        return self.step == BACKGROUND_STEP


@dataclass(frozen=True)
class Reconciled:
    decision: Decision
    measured: tuple[MeasurementTaken, ...]
    generation: int | None  # the view generation handed to the gateway; None when the view did not change


class EmbeddedController:
    """One ModelRollout's controller over one in-process gateway."""

    def __init__(
        self, rollout: ModelRollout, gateway: Gateway, key: SigningKey, candidate: plan.Candidate, uid: str
    ) -> None:
        check_embeddable(rollout)
        self.spec = rollout.spec
        self.namespace = rollout.metadata.namespace or "default"
        self.name = rollout.metadata.name
        self.rules = analysis_runs.rules_for(self.spec)  # InvalidField for a condition that does not compile
        self.gateway = gateway
        self.key = key
        self.candidate = candidate
        self.uid = uid
        self.state = StepState()
        self.runs: list[analysis_runs.MetricRun] = []
        self.release: SignedRelease | None = None
        self._releases: dict[str, JSON] = {}  # the fleet's signed releases, as the fleet's ConfigMap keeps them

    @property
    def entry_name(self) -> str:
        return plan.view_entry_name(self.namespace, self.name)

    @property
    def fleet(self) -> str:
        return self.spec.fleet

    def view(self) -> FleetView | None:
        snapshot = self.gateway.states.get(self.fleet)
        return snapshot.view if snapshot is not None else None

    def start_fleet(self, stable: plan.Candidate, now: float) -> int:
        """Publish the fleet's view before the rollout: every device on `stable`, whose release this fleet's key
        signs as the version the fleet ran before revision 1. Returns the view's generation."""
        record = ReleaseRecord(
            rollout=self.entry_name,
            revision=0,
            version=stable.digest,
            digest=stable.digest,
            size=stable.size,
            architecture=stable.architecture,
            key_id=self.key.key_id,
            issued_at=rfc3339(now),
        )
        signed = sign_release(record, self.key)
        view = plan.merge_view(None, self.fleet, self.entry_name, None, stable.digest)
        self._releases = plan.merge_releases({}, view, signed)
        return self._put(view)

    def reconcile(self, now: float) -> Reconciled:
        """One pass of the controller at `now` (epoch seconds)."""
        spec, state = self.spec, self.state
        view = self.view()
        if state.stable is None and view is not None and view.stable is not None:
            state = dataclasses.replace(state, stable=view.stable)

        runs = analysis_runs.sync(self.runs, spec, state)
        runs, measured = self._measure(runs, state, now)
        step_result, background_result = analysis_runs.results(runs, state)
        decision = decide(
            spec,
            state,
            Observation(
                now=now,
                model_key=spec.model.key,
                candidate=self.candidate.digest,
                step_analysis=step_result,
                background_analysis=background_result,
            ),
        )
        new_state = dataclasses.replace(decision.state, salt=plan.salt_for(self.uid, decision.state.revision))
        runs = analysis_runs.sync(runs, spec, new_state)

        signed = None
        if new_state.candidate is not None and new_state.candidate == self.candidate.digest:
            current = self.release.record if self.release is not None else None
            if current is None or current.digest != self.candidate.digest or current.revision != new_state.revision:
                record = plan.release_record(
                    self.namespace, self.name, new_state, self.candidate, self.key.key_id, rfc3339(now)
                )
                self.release = sign_release(record, self.key)
            signed = self.release

        generation = self._write_view(new_state, view, signed)
        self.state, self.runs = new_state, runs
        return Reconciled(decision, measured, generation)

    # --- measuring -----------------------------------------------------------------------------------------

    def _measure(
        self, runs: list[analysis_runs.MetricRun], state: StepState, now: float
    ) -> tuple[list[analysis_runs.MetricRun], tuple[MeasurementTaken, ...]]:
        due = {(d.run.metric, d.run.run, d.run.step): d for d in analysis_runs.due(runs, self.spec, now)}
        if not due:
            return runs, ()
        health = self.gateway.summary(self.fleet).health
        measured: list[analysis_runs.MetricRun] = []
        taken: list[MeasurementTaken] = []
        for run in runs:
            item = due.get((run.metric, run.run, run.step))
            if item is None:
                measured.append(run)
                continue
            builtin = item.metric.provider.builtin
            if builtin is None:  # pragma: no cover - check_embeddable refused it
                sample = Sample(None, None, 0, error="prometheus metrics need a cluster")
            elif state.candidate is None:
                sample = Sample(None, None, 0, error="no candidate to measure")
            else:
                sample = builtin_sample(health, builtin.metric, state.candidate, state.stable, item.metric.baseline)
            run = analysis_runs.record(run, self.rules[run.metric], sample, now)
            measured.append(run)
            taken.append(MeasurementTaken(run.metric, run.step, run.measurements[-1], run.phase))
        return measured, tuple(taken)

    # --- the fleet's view ----------------------------------------------------------------------------------

    def _write_view(self, state: StepState, view: FleetView | None, signed: SignedRelease | None) -> int | None:
        entry = plan.rollout_view(self.namespace, self.name, self.spec, state, view.stable if view else None)
        new_stable = state.stable if state.phase == RolloutPhase.HEALTHY else None
        merged = plan.merge_view(view, self.fleet, self.entry_name, entry, new_stable)
        releases = plan.merge_releases(self._releases, merged, signed)
        if merged is view and releases == self._releases:
            return None
        self._releases = releases
        return self._put(merged)

    def _put(self, view: FleetView) -> int:
        parts = {digest: _parts(signed) for digest, signed in self._releases.items()}
        generation, _ = self.gateway.put_fleet_view(self.fleet, json.dumps(view.to_dict()).encode(), parts)
        return generation


def _parts(signed: Mapping[str, Any]) -> SignedParts:
    release = SignedRelease.from_dict(signed)
    return SignedParts(release.record.canonical_bytes(), release.signature, release.record.key_id)
