"""The ModelRollout controller: one reconciliation reads the rollout, the model it ships and its fleet's view,
measures the analyses that are due, lets the step machine decide, and writes back status, view and Events.

Everything it decides comes from pure modules (`rollout.steps`, `rollout.analysis_runs`,
`operator.reconcile.modelrollout`); this module only gathers their inputs and carries out their outputs:
- the candidate is the digest a FederatedJob's aggregator published (`status.model`), or the artifact the spec
  names (its size and architecture asked of the gateway, which stores it);
- analyses with `provider: prometheus` are instant queries, run twice (the candidate's version, then the
  baseline's) plus the number of devices that reported on the candidate; `builtin` metrics exist only in the
  embedded runtime, so here they are an Error measurement (and never a pass);
- the fleet's view is derived from the status the step machine returns, written after it: a crash between
  the two writes is repaired by the next reconciliation, which derives the same view again.
The rollout's own state lives only in its status, so a restarted operator continues at the same step.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import ValidationError

from fedfleet.api.manifest import describe_validation_error
from fedfleet.api.modelrollout import Baseline, MetricSpec, ModelRolloutSpec
from fedfleet.api.rollout_actions import ACTION_ANNOTATION, ActionError, parse_request
from fedfleet.api.rollout_status import ModelRolloutStatus, RolloutPhase
from fedfleet.models.artifact import SignedRelease
from fedfleet.operator.k8s import ApiError, RolloutApi
from fedfleet.operator.prometheus import PrometheusClient, PrometheusError
from fedfleet.operator.query_syntax import QuerySyntax
from fedfleet.operator.reconcile import modelrollout as plan
from fedfleet.operator.rollout_metrics import RolloutMetrics
from fedfleet.rollout import analysis_runs
from fedfleet.rollout.analysis import Sample
from fedfleet.rollout.errors import InvalidField
from fedfleet.rollout.health import conditions_for
from fedfleet.rollout.queries import QueryTemplateError, check_template, render
from fedfleet.rollout.step_state import StepState
from fedfleet.rollout.steps import Decision, Observation, decide
from fedfleet.rollout.timestamps import rfc3339
from fedfleet.security.releases import sign_release
from fedfleet.security.signing import SigningKey

log = logging.getLogger("fedfleet.operator.rollout")

JSON = dict[str, Any]
#: Reporting devices: the gateway's gauge of distinct devices that reported health on a version.
REPORTING_QUERY = 'sum(fedfleet_gateway_reporting_devices{{fleet="{fleet}",version="{version}"}})'
DEVICES_QUERY = 'sum by (version, role) (fedfleet_gateway_devices{{fleet="{fleet}"}})'
ArtifactLookup = Callable[[str], Awaitable[plan.Candidate | None]]


@dataclass(frozen=True)
class RolloutSettings:
    fleet_namespace: str  # where the gateway runs: the fleets' ConfigMaps and signing keys live there
    prometheus_address: str | None  # the chart's Prometheus, for rollouts that name none


class RolloutController:
    def __init__(
        self,
        api: RolloutApi,
        settings: RolloutSettings,
        metrics: RolloutMetrics,
        artifact_lookup: ArtifactLookup | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api, self.settings, self.metrics = api, settings, metrics
        self.artifact_lookup = artifact_lookup
        self.clock = clock
        self.query_syntax = QuerySyntax()

    async def reconcile(self, namespace: str, name: str) -> None:
        rollout = await self.api.get_rollout(namespace, name)
        if rollout is None or "deletionTimestamp" in rollout["metadata"]:
            return
        now = self.clock()
        generation = int(rollout["metadata"].get("generation", 0))
        try:
            spec = ModelRolloutSpec.model_validate(rollout.get("spec") or {})
            rules = analysis_runs.rules_for(spec)
            for index, metric in enumerate(spec.analysis.metrics):
                if metric.provider.prometheus is not None:
                    try:
                        check_template(metric.provider.prometheus.query)
                    except QueryTemplateError as err:
                        raise InvalidField(
                            f"spec.analysis.metrics[{index}].provider.prometheus.query", str(err)
                        ) from None
        except (ValidationError, InvalidField) as err:
            message = describe_validation_error(err) if isinstance(err, ValidationError) else str(err)
            await self._hold(rollout, generation, "InvalidSpec", message)
            return
        unparsable = await self._unparsable_query(spec)
        if unparsable is not None:
            await self._hold(rollout, generation, "InvalidSpec", unparsable)
            return
        status = ModelRolloutStatus.model_validate(rollout.get("status") or {})
        state = StepState.from_status(status)

        fleet_cm = await self.api.get_configmap(self.settings.fleet_namespace, plan.fleet_configmap_name(spec.fleet))
        try:
            view, releases, trusted = plan.read_fleet_configmap(fleet_cm, spec.fleet)
        except ValueError as err:
            await self._hold(rollout, generation, "FleetViewUnreadable", str(err))
            return
        if state.stable is None and view is not None and view.stable is not None:
            state = dataclasses.replace(state, stable=view.stable)

        candidate = await self._candidate(namespace, spec)
        action, action_id = self._action(rollout)

        runs = analysis_runs.sync(analysis_runs.runs_from_status(status.analysis_runs), spec, state)
        runs = await self._measure(namespace, name, spec, state, runs, rules, now)
        step_result, background_result = analysis_runs.results(runs, state)

        decision = decide(
            spec,
            state,
            Observation(
                now=now,
                model_key=spec.model.key,
                candidate=candidate.digest if candidate else None,
                step_analysis=step_result,
                background_analysis=background_result,
                action=action,
                action_id=action_id,
            ),
        )
        new_state = dataclasses.replace(
            decision.state, salt=plan.salt_for(rollout["metadata"]["uid"], decision.state.revision)
        )
        runs = analysis_runs.sync(runs, spec, new_state)

        key, trusted = await self._signing_key(spec.fleet, trusted)
        release = status.release
        signed = None
        if new_state.candidate is not None and candidate is not None and new_state.candidate == candidate.digest:
            current = (release or {}).get("record", {})
            if current.get("digest") != candidate.digest or current.get("revision") != new_state.revision:
                record = plan.release_record(namespace, name, new_state, candidate, key.key_id, rfc3339(now))
                signed = sign_release(record, key)
                release = signed.to_dict()
            else:
                # Signed by an earlier reconciliation (whose view write may have failed): the same record again.
                signed = SignedRelease.from_dict(release)

        devices = await self._devices(spec)
        patch: JSON = {
            **new_state.to_status(),
            "observedGeneration": generation,
            "release": release,
            "analysisRuns": analysis_runs.runs_to_status(runs),
            "conditions": [
                c.model_dump(by_alias=True, exclude_none=True)
                for c in conditions_for(new_state, generation, now, status.conditions)
            ],
        }
        if devices is not None:
            patch["devices"] = devices
        await self.api.patch_status(namespace, name, patch)

        # A finished rollout makes its version the fleet's stable one once: re-asserted on every reconciliation,
        # an older finished rollout would take the fleet back from a newer one's version.
        publish_stable = new_state.phase == RolloutPhase.HEALTHY and status.stable_published != new_state.revision
        await self._write_view(
            namespace, name, spec, new_state, view, releases, trusted, signed, fleet_cm, publish_stable
        )
        if publish_stable:
            await self.api.patch_status(namespace, name, {"stablePublished": new_state.revision})
        await self._announce(rollout, decision)
        self.metrics.observe(namespace, name, new_state.phase, new_state.step_index, new_state.weight)

    async def forget(self, namespace: str, name: str, fleet: str) -> None:
        """The rollout is deleted: its devices go back to the fleet's stable version."""
        cm = await self.api.get_configmap(self.settings.fleet_namespace, plan.fleet_configmap_name(fleet))
        view, releases, trusted = plan.read_fleet_configmap(cm, fleet)
        if view is not None:
            merged = plan.merge_view(view, fleet, plan.view_entry_name(namespace, name), None, None)
            if merged is not view:
                body = plan.fleet_configmap(
                    self.settings.fleet_namespace,
                    fleet,
                    merged,
                    plan.merge_releases(releases, merged, None),
                    trusted,
                    (cm or {}).get("metadata", {}).get("resourceVersion"),
                )
                await self.api.put_configmap(self.settings.fleet_namespace, body)
        self.metrics.forget(namespace, name)

    # --- inputs -------------------------------------------------------------------------------------------

    async def _candidate(self, namespace: str, spec: ModelRolloutSpec) -> plan.Candidate | None:
        if spec.model.federated_job is not None:
            job = await self.api.get_job(namespace, spec.model.federated_job)
            return plan.candidate_from_job((job or {}).get("status"))
        if spec.model.artifact is not None and self.artifact_lookup is not None:
            return await self.artifact_lookup(spec.model.artifact)
        return None

    def _action(self, rollout: JSON) -> tuple[Any, str]:
        value = (rollout["metadata"].get("annotations") or {}).get(ACTION_ANNOTATION)
        if not value:
            return None, ""
        try:
            request = parse_request(value)
        except ActionError as err:
            log.warning("%s/%s: %s", rollout["metadata"]["namespace"], rollout["metadata"]["name"], err)
            return None, ""
        return request.action, request.request_id

    async def _measure(
        self,
        namespace: str,
        name: str,
        spec: ModelRolloutSpec,
        state: StepState,
        runs: list[analysis_runs.MetricRun],
        rules: dict[str, Any],
        now: float,
    ) -> list[analysis_runs.MetricRun]:
        due = {(d.run.metric, d.run.run, d.run.step): d for d in analysis_runs.due(runs, spec, now)}
        if not due:
            return runs
        measured = []
        async with aiohttp.ClientSession() as session:
            for run in runs:
                item = due.get((run.metric, run.run, run.step))
                if item is None:
                    measured.append(run)
                    continue
                sample = await self._sample(namespace, name, spec, state, item.metric, session)
                run = analysis_runs.record(run, rules[run.metric], sample, now)
                self.metrics.measured(namespace, name, run.metric, run.measurements[-1].phase.value)
                measured.append(run)
        return measured

    def _prometheus_address(self, spec: ModelRolloutSpec) -> str | None:
        return spec.prometheus.address if spec.prometheus is not None else self.settings.prometheus_address

    async def _unparsable_query(self, spec: ModelRolloutSpec) -> str | None:
        """What CEL cannot check: that every query parses as PromQL (asked of the Prometheus that runs it)."""
        address = self._prometheus_address(spec)
        if address is None:
            return None
        templates = [
            (f"spec.analysis.metrics[{index}].provider.prometheus.query", metric.provider.prometheus.query)
            for index, metric in enumerate(spec.analysis.metrics)
            if metric.provider.prometheus is not None
        ]
        return await self.query_syntax.first_unparsable(address, templates)

    async def _sample(
        self,
        namespace: str,
        name: str,
        spec: ModelRolloutSpec,
        state: StepState,
        metric: MetricSpec,
        session: aiohttp.ClientSession,
    ) -> Sample:
        if metric.provider.prometheus is None:
            return Sample(None, None, 0, error="builtin metrics exist only in the embedded runtime (fedfleet rollout)")
        address = self._prometheus_address(spec)
        if address is None:
            return Sample(
                None, None, 0, error="no Prometheus: set spec.prometheus.address or the chart's prometheus.address"
            )
        if state.candidate is None:
            return Sample(None, None, 0, error="no candidate to measure")
        client = PrometheusClient(address)
        baseline_version = state.stable if metric.baseline != Baseline.NONE else None
        names = {"fleet": spec.fleet, "rollout": f"{namespace}.{name}", "baseline": baseline_version}
        try:
            value = await client.query(
                render(metric.provider.prometheus.query, {**names, "version": state.candidate}), session
            )
            baseline = None
            if baseline_version is not None:
                baseline = await client.query(
                    render(metric.provider.prometheus.query, {**names, "version": baseline_version}), session
                )
            devices = await client.query(REPORTING_QUERY.format(fleet=spec.fleet, version=state.candidate), session)
        except (PrometheusError, QueryTemplateError) as err:
            return Sample(None, None, 0, error=str(err))
        return Sample(value, baseline, int(devices or 0))

    async def _devices(self, spec: ModelRolloutSpec) -> list[JSON] | None:
        """Devices by version and role as the gateway counts them, for `kubectl fedfleet status`."""
        address = self._prometheus_address(spec)
        if address is None:
            return None
        try:
            series = await PrometheusClient(address).query_series(DEVICES_QUERY.format(fleet=spec.fleet))
        except PrometheusError:
            return None
        rows = sorted(((int(v), s.get("version", ""), s.get("role", "")) for s, v in series), reverse=True)
        return [{"version": version, "role": role, "count": count} for count, version, role in rows[:16]]

    async def _signing_key(self, fleet: str, trusted: list[str]) -> tuple[SigningKey, list[str]]:
        """The fleet's signing key, made on first use. The public key joins the trusted keys the fleet's view
        carries; a rotated key (a new Secret) is added beside the old one, which devices keep trusting until an
        administrator removes it."""
        ns, secret_name = self.settings.fleet_namespace, plan.signing_secret_name(fleet)
        secret = await self.api.get_secret(ns, secret_name)
        if secret is None:
            new = SigningKey.generate()
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret_name, "namespace": ns, "labels": {"fedfleet.io/fleet": fleet}},
                "type": "Opaque",
                "stringData": {plan.SIGNING_KEY_FILE: new.to_pem().decode("ascii")},
            }
            await self.api.create_secret(ns, body)
            secret = await self.api.get_secret(ns, secret_name)
            if secret is None:
                raise ApiError(404, "GET", secret_name, {"message": "signing key vanished after creation"})
        key = SigningKey.from_pem(base64.b64decode(secret["data"][plan.SIGNING_KEY_FILE]))
        public = key.public().to_text()
        return key, trusted if public in trusted else [*trusted, public]

    # --- outputs ------------------------------------------------------------------------------------------

    async def _write_view(
        self,
        namespace: str,
        name: str,
        spec: ModelRolloutSpec,
        state: StepState,
        view: Any,
        releases: dict[str, JSON],
        trusted: list[str],
        signed: Any,
        fleet_cm: JSON | None,
        publish_stable: bool,
    ) -> None:
        entry = plan.rollout_view(namespace, name, spec, state, view.stable if view else None)
        new_stable = state.stable if publish_stable else None
        merged = plan.merge_view(view, spec.fleet, plan.view_entry_name(namespace, name), entry, new_stable)
        new_releases = plan.merge_releases(releases, merged, signed)
        old_keys = (fleet_cm or {}).get("data", {}).get(plan.TRUSTED_KEYS_KEY, "")
        if merged is view and new_releases == releases and old_keys == "".join(f"{k}\n" for k in trusted):
            return
        body = plan.fleet_configmap(
            self.settings.fleet_namespace,
            spec.fleet,
            merged,
            new_releases,
            trusted,
            (fleet_cm or {}).get("metadata", {}).get("resourceVersion"),
        )
        await self.api.put_configmap(self.settings.fleet_namespace, body)

    async def _announce(self, rollout: JSON, decision: Decision) -> None:
        meta = rollout["metadata"]
        for event in decision.events:
            log.info("rollout %s/%s: %s: %s", meta["namespace"], meta["name"], event.reason, event.message)
            if event.type == "Warning" and decision.state.phase == RolloutPhase.DEGRADED:
                self.metrics.aborted(meta["namespace"], meta["name"], event.reason)
            await self.api.post_event(rollout, event.type, event.reason, event.message)

    async def _hold(self, rollout: JSON, generation: int, reason: str, message: str) -> None:
        """A spec the controller cannot act on: say so (condition, Event), change nothing on devices."""
        meta = rollout["metadata"]
        status = rollout.get("status") or {}
        if status.get("reason") == reason and status.get("message") == message:
            return
        log.warning("rollout %s/%s: %s: %s", meta["namespace"], meta["name"], reason, message)
        now = rfc3339(self.clock())
        condition = {
            "type": "Stalled",
            "status": "True",
            "reason": reason,
            "message": message[:4096],
            "lastTransitionTime": now,
            "observedGeneration": generation,
        }
        await self.api.patch_status(
            meta["namespace"],
            meta["name"],
            {"reason": reason, "message": message[:4096], "observedGeneration": generation, "conditions": [condition]},
        )
        await self.api.post_event(rollout, "Warning", reason, message)
